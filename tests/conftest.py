from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "celebamask-mini"


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `python -m ...` as a user would, with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd or REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A small generated face set in the challenge layout (64 px)."""
    from train.synthetic import write_dataset

    return write_dataset(tmp_path_factory.mktemp("syn"), {"train": 24, "val": 8, "test": 4}, size=64, seed=3)


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not (SHARED_DATA / "val" / "masks").is_dir():
        pytest.skip(f"real challenge data not found at {SHARED_DATA} (it lives in ../shared, beside the checkout)")
    return SHARED_DATA


class StopAtFit(Exception):
    """Raised by the stand-in for `fit` that `capture_initial_weights` installs."""


def capture_initial_weights(monkeypatch, module) -> list:
    """Replace `module.fit` by a stand-in that records the model's initial weights, then raises StopAtFit."""
    import torch

    seen = []

    def fake_fit(model, *args, **kwargs):
        seen.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        raise StopAtFit

    monkeypatch.setattr(module, "fit", fake_fit)
    return seen
