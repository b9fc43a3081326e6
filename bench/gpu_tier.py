"""`python -m bench.gpu_tier`: the whole GPU tier in one command, inside 25 minutes on one H100.

Phases, each timed: (0) a few training steps of the device path under torch's sync debug mode "error": does
any step wait for the host (`sync_free` in the JSON)? (1) training throughput at 256 and 512 px, end-to-end
against model-only (the data path's efficiency); (2) an architecture search of as many trials as fit in
`--search-minutes` at the GPU proxy, with `--workers` processes sharing the one GPU through a journal file (under
CUDA MPS only with `--mps`; the JSON says which); (3) `train.final` of the best trial at 512 px. Prints, and writes
to OUT/gpu_tier.json: device name, val F of the final model, trials per hour, efficiency at each size, seconds per
phase. `--smoke` runs the same path on the CPU in a minute
at tiny sizes on generated faces (a test runs it).

On the GPU machine the image lacks optuna, optuna-dashboard, sqlalchemy and albumentations; their wheels are in
`../shared/wheels/gpu-py312/` (see its README). Before the run, here, in the checkout:

    echo /.whl/ >> .git/info/exclude; mkdir -p .whl && cp ../shared/wheels/gpu-py312/*.whl .whl/
    mkdir -p data && cp -r ../shared/data/celebamask-mini data/     # data/ is git-ignored: carry it

and the run's command (carry `.whl` and `data/celebamask-mini`):

    python3 -m pip install -q --no-index --no-deps --target .site .whl/*.whl && export PYTHONPATH=$PWD/.site:$PWD
    python3 -m bench.gpu_tier --data data/celebamask-mini --out $OUT
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from bench.throughput import device_name, measure
from search.storage import open_storage
from space.network import build_model
from space.presets import PRESETS
from space.sample import sample_config
from train.accel import Accel, sync_debug_mode
from train.cli import parser as cli_parser
from train.data import SplitCache
from train.infer import pick_device
from train.loop import make_batches, on_device, setup_run, train_step
from train.synthetic import write_dataset

REPO = Path(__file__).resolve().parents[1]
STUDY = "gpu-tier"


def run_module(*args: str, log: Path) -> subprocess.CompletedProcess:
    """`python -m ...` with this checkout importable; its output goes to `log` and, line by line, to stdout."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-m", *args], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            f.write(line)
            print("  " + line, end="", flush=True)
        proc.wait()
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(args[:1])} exited {proc.returncode}; its log: {log}")
    return proc


def mps(start: bool) -> bool:
    """Start (or stop) the CUDA MPS daemon where the machine has it; True when it is running afterwards."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return False
    if start:
        return subprocess.run([control, "-d"], capture_output=True).returncode == 0
    subprocess.run([control], input="quit\n", text=True, capture_output=True)
    return False


def sync_check(device: torch.device, data: Path, size: int, steps: int = 6) -> dict:
    """`steps` training steps of dw_unet on the device's own path (Accel.of(device): data on the device, fused
    AdamW, bf16, EMA), after one warm-up step; on CUDA under torch's sync debug mode "error", so any step that
    waits for the host raises. Elsewhere the steps run unchecked (the smoke test of this code)."""
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))
    train_cfg = dataclasses.replace(train_cfg, batch_size=4, ema=0.99)
    accel, cuda = Accel.of(device), device.type == "cuda"
    train, _ = SplitCache(data)[size]
    torch.manual_seed(0)
    run = setup_run(build_model(arch), train, loss_cfg, train_cfg, steps + 1, device, accel, False, None)
    batches = make_batches(train, size, train_cfg, device, accel, 0)
    batch_iter = iter(batches.epoch(0))
    if len(batches) < steps + 1:
        raise SystemExit(f"error: the sync check needs {steps + 1} batches of 4 training images")
    train_step(run, *on_device(run, *next(batch_iter)))  # warm-up: lazy initialisation may wait for the device
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.set_sync_debug_mode(sync_debug_mode("error"))
    error = None
    try:
        for _ in range(steps):
            train_step(run, *on_device(run, *next(batch_iter)))
    except RuntimeError as e:  # what the sync debug mode raises at the first synchronising call
        error = str(e).splitlines()[0][:300]
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode(sync_debug_mode("default"))
    return {"steps": steps, "checked": cuda, "sync_free": (error is None) if cuda else None, "error": error,
            "accel": dataclasses.asdict(accel)}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli_parser("python -m bench.gpu_tier", __doc__)
    p.add_argument("--data", type=Path, default=None, help="dataset root (challenge layout); required unless --smoke")
    p.add_argument("--out", type=Path, default=Path("runs/gpu_tier"), help="folder for the study, logs and JSON")
    p.add_argument("--search-minutes", type=float, default=12.0, help="time given to the search")
    p.add_argument("--workers", type=int, default=4, help="search processes sharing the GPU")
    p.add_argument("--mps", action=argparse.BooleanOptionalAction, default=False,
                   help="start CUDA MPS for the search workers where the machine has it (opt-in: it changes how the "
                        "workers share the GPU; the JSON records whether it ran)")
    p.add_argument("--final-epochs", type=int, default=60, help="epochs of the 512-px final run")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="train.final through torch.compile (default on for the GPU tier, off for --smoke; "
                        "`--smoke --compile` runs the compiled path on the CPU, about 2 minutes on 2 cores)")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="throughput resolutions")
    p.add_argument("--smoke", action="store_true", help="the same path on the CPU at tiny sizes, in about a minute")
    return p.parse_args(argv)


def gpu_or_none(tiny: bool, data: Path | None, what: str, flag: str) -> torch.device | None:
    """The device of a GPU bench: the CPU for its tiny run (`flag`), else CUDA; None, having said why, when
    there is no CUDA device or no --data."""
    device = pick_device("cpu" if tiny else "auto")
    if not tiny and (device.type != "cuda" or data is None):
        print(f"error: {what} needs a CUDA device and --data ROOT (use {flag} on the CPU)", file=sys.stderr)
        return None
    return device


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = gpu_or_none(args.smoke, args.data, "the GPU tier", "--smoke")
    if device is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    if args.smoke:  # tiny: 64-px faces, 32-px proxies of one epoch, a 1-epoch final at 32 px
        data = write_dataset(Path(tmp.name) / "faces", {"train": 12, "val": 4, "test": 2}, size=64, seed=0)
        sizes, search = [32], ["--proxy-size", "32", "--proxy-epochs", "1", "--trials", "3", "--device", "cpu",
                               "--rung", "0"]  # the GPU tier's default: no rung (not measured there)
        final = ["--size", "32", "--epochs", "1", "--device", "cpu", "--compile" if args.compile else "--no-compile"]
        workers, n_images = 2, 8
    else:
        data, sizes, search = args.data, args.sizes, ["--trials", "100000", "--timeout", str(args.search_minutes * 60)]
        final = ["--size", "512", "--epochs", str(args.final_epochs),
                 "--no-compile" if args.compile is False else "--compile"]
        workers, n_images = args.workers, 256
    report: dict = {"device": device_name(device), "torch": torch.__version__, "smoke": args.smoke, "seconds": {}}
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    t0 = time.perf_counter()
    print("gpu_tier: training steps under the sync debug mode", flush=True)
    report["sync_check"] = sync_check(device, data, 32 if args.smoke else 256, steps=2 if args.smoke else 6)
    print(f"  {report['sync_check']}", flush=True)
    report["seconds"]["sync_check"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    print(f"gpu_tier: throughput at {sizes} px on {report['device']}", flush=True)
    rows = measure(sizes, "deeplab_lite", 16 if not args.smoke else 4, device, 0, n_images, epochs=3)
    report["throughput"] = rows
    report["seconds"]["throughput"] = round(time.perf_counter() - t0, 1)

    journal = args.out / "study.journal"
    if journal.exists():
        journal.unlink()  # each run of the tier measures a fresh search
    report["mps"] = mps(True) if args.mps and not args.smoke and workers > 1 else False
    t0 = time.perf_counter()
    print(f"gpu_tier: search with {workers} workers (MPS {'on' if report['mps'] else 'off'})", flush=True)
    try:
        run_module("search.run", "--data", str(data), "--storage", str(journal), "--study", STUDY,
                   "--workers", str(workers), "--artifact-dir", str(args.out / "artifacts"), *search,
                   log=args.out / "search.log")
    finally:
        if report["mps"]:
            mps(False)
    search_s = time.perf_counter() - t0
    study = optuna.load_study(study_name=STUDY, storage=open_storage(str(journal), heartbeat=None))
    finished = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in finished if t.state == optuna.trial.TrialState.COMPLETE]
    report["search"] = {"trials": len(finished), "complete": len(complete), "workers": workers,
                        "trials_per_hour": round(len(finished) / search_s * 3600, 1),
                        "best_proxy_f": max((t.value for t in complete), default=None)}
    report["seconds"]["search"] = round(search_s, 1)

    t0 = time.perf_counter()
    print("gpu_tier: train.final of the best trial", flush=True)
    run_module("train.final", "--study", STUDY, "--storage", str(journal), "--out", str(args.out / "final"),
               *final, log=args.out / "final.log")
    result = json.loads((args.out / "final" / "final.json").read_text())
    report["final"] = result
    report["seconds"]["final"] = round(time.perf_counter() - t0, 1)
    tmp.cleanup()

    (args.out / "gpu_tier.json").write_text(json.dumps(report, indent=1))
    print(f"\ndevice {report['device']}: val F {result['val_f']:.4f} (flip TTA {result['val_f_flip_tta']:.4f}) at "
          f"{result['size']} px x {result['epochs']} epochs; {report['search']['trials']} trials "
          f"({report['search']['trials_per_hour']:.0f}/hour, {workers} workers); efficiency "
          + ", ".join(f"{r['efficiency']:.2f} at {r['size']} px" for r in rows)
          + f"; seconds {report['seconds']}; {args.out / 'gpu_tier.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
