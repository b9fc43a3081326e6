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


def run_main(module: str, *args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    """`python -m module args` through the module's own `main` in this process, for refusals and other quick
    commands: no interpreter and torch import per call (about 4 s each). The exit status is main's return value or
    its SystemExit's (argparse's refusals; a message given as the code goes to stderr, as Python prints it);
    warnings go to stderr as they would. Restored after: the working folder, the environment, torch's thread count
    and random state. A command still running after `timeout` seconds fails the test (a refusal that stopped
    refusing must not run a whole search in the test process)."""
    import contextlib
    import importlib
    import io
    import signal
    import warnings

    import torch

    command = importlib.import_module(module)  # imported before stderr is redirected: loggers keep the real stream
    out, err, here, env, threads = io.StringIO(), io.StringIO(), os.getcwd(), dict(os.environ), torch.get_num_threads()

    def too_long(signum, frame):
        raise TimeoutError(f"run_main({module!r}, ...) still running after {timeout} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(timeout)
    try:
        os.chdir(cwd or REPO)
        with torch.random.fork_rng(), warnings.catch_warnings(), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            warnings.simplefilter("default")
            warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: err.write(
                warnings.formatwarning(message, category, filename, lineno, line))
            try:
                code = command.main(list(args))
            except SystemExit as e:
                code = e.code if e.code is None or isinstance(e.code, int) else 1
                if not (e.code is None or isinstance(e.code, int)):
                    print(e.code, file=err)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.chdir(here)
        os.environ.clear()
        os.environ.update(env)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([module, *args], code or 0, out.getvalue(), err.getvalue())


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


# The slowest test files first (their summed seconds, alone on two cores, 2026-12-07: search 182, analysis 137,
# deliverables 90, bench 86, reliability 80, parallel 75, final 73, plan 62, scale 60, rung 50, demo 45, learning
# 43), so that the two processes of `make test` (--dist loadfile --no-loadscope-reorder) end together: a long file
# handed out last leaves one process working alone. Files not named keep their place after these.
SLOWEST_FIRST = ("test_search.py", "test_analysis.py", "test_deliverables.py", "test_bench.py", "test_reliability.py",
                 "test_parallel.py", "test_final.py", "test_plan.py", "test_scale.py", "test_rung.py", "test_demo.py",
                 "test_learning.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order is kept
