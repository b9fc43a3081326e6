from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two test processes on two cores: one thread each,
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # and for the commands they start, else they oversubscribe
    os.environ.setdefault("MKL_NUM_THREADS", "1")

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


@dataclass
class FitCall:
    weights: object  # the model's initial weights, flattened into one tensor
    train_cfg: object
    kwargs: dict


def capture_initial_weights(monkeypatch) -> list[FitCall]:
    """Replace `train.loop.fit` (every training path goes through it) by a stand-in that records the model's
    initial weights and the call's settings, then raises StopAtFit."""
    import torch

    import train.loop

    seen = []

    def fake_fit(model, splits, loss_cfg, train_cfg, **kwargs):
        seen.append(FitCall(torch.cat([p.detach().flatten() for p in model.parameters()]), train_cfg, kwargs))
        raise StopAtFit

    monkeypatch.setattr(train.loop, "fit", fake_fit)
    return seen


@pytest.fixture(scope="session")
def final_run(tiny_data, tmp_path_factory) -> Path:
    """A finished 1-epoch train.final of the dw_unet preset at 32 px on the generated faces."""
    out = tmp_path_factory.mktemp("deliverables") / "final"
    res = run_cli("train.final", "--preset", "dw_unet", "--data", str(tiny_data), "--size", "32", "--epochs", "1",
                  "--device", "cpu", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "report.pdf: body font Liberation Sans" in res.stdout or "report.pdf: body font Arial" in res.stdout
    return out
