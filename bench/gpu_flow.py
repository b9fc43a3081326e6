"""`python -m bench.gpu_flow --data DIR --out OUT`: the flow's first figures at the task's resolution, on one GPU,
inside 10 minutes (issue 30); `bench/gpu_flow.sh` prepares the checkout here and runs this there.

Three steps, each writing OUT/<step>.json the moment it ends and printing one `gpu_flow:` line, so that a run cut
short keeps the steps that finished:
1. `tier`: `bench.gpu_tier`'s smoke figures on the device: training steps under the sync debug mode, end-to-end
   and model-only images/s of `dw_unet` at R85 at 512 px (the efficiency), and the device memory it took;
2. `final`: `train.final --preset dw_unet` at R85 at 512 px, for as many epochs as fit `--final-minutes` (one
   epoch's time comes from step 1's images/s), val F with and without flip TTA;
3. `search`: `search.run` at the CUDA proxy defaults with `--workers` processes packed on the one GPU, up to
   `--trials` trials or the time left, and the trials per GPU-minute.

`--dry-run` runs the same steps on the CPU at tiny sizes on generated faces (a test runs it), so that an argument
error never costs GPU time.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

from bench.gpu_tier import gpu_or_none, run_module, sync_check
from bench.throughput import device_name, measure
from search.storage import open_storage
from space.portfolio import R85
from train.cli import parser as cli_parser
from train.data import DataError, list_split
from train.synthetic import write_dataset

STUDY = "gpu-flow"


def write_step(out: Path, name: str, record: dict, t0: float) -> dict:
    """OUT/<name>.json, written as soon as the step ends, with its wall seconds."""
    record = {**record, "seconds": round(time.perf_counter() - t0, 1)}
    (out / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


def check_data(data: Path) -> int:
    """The number of training images; a one-line error when train or val is missing or unreadable."""
    try:
        train, val = list_split(data, "train"), list_split(data, "val")
    except DataError as e:
        raise SystemExit(f"error: --data {data}: {e}") from None
    print(f"gpu_flow: data {data}: {len(train)} train, {len(val)} val pairs", flush=True)
    return len(train)


def tier(device: torch.device, data: Path, size: int, n_images: int, dry: bool) -> dict:
    """Sync check, then dw_unet's throughput at `size` at R85's batch (8), and the peak device memory."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    checked = sync_check(device, data, size, steps=2 if dry else 6)
    rows = measure([size], "dw_unet", R85["batch_size"], device, 0, n_images, epochs=2 if dry else 3, data=data)
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"device": device_name(device), "torch": torch.__version__, "sync_check": checked, "throughput": rows,
            "peak_memory_gib": memory}


def final_epochs(images_per_s: float, n_train: int, minutes: float) -> int:
    """Epochs of `n_train` images that fit `minutes` at `images_per_s` (training only; at least one)."""
    return max(1, math.floor(minutes * 60 * images_per_s / n_train))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = cli_parser("python -m bench.gpu_flow", __doc__)
    p.add_argument("--data", type=Path, default=None,
                   help="train and val in the challenge layout (on the GPU machine: the carried folder); not needed "
                        "with --dry-run")
    p.add_argument("--out", type=Path, required=True, help="folder for the JSON of each step, logs and the study")
    p.add_argument("--size", type=int, default=512, help="the final's resolution and the throughput's")
    p.add_argument("--final-minutes", type=float, default=5.0, help="training time given to the final")
    p.add_argument("--trials", type=int, default=20, help="trials of the short search")
    p.add_argument("--workers", type=int, default=4, help="search processes packed on the one GPU")
    p.add_argument("--minutes", type=float, default=10.0,
                   help="the whole run's budget: the search stops starting trials when it is spent")
    p.add_argument("--dry-run", action="store_true", help="the same steps on the CPU at tiny sizes (a test runs it)")
    args = p.parse_args(argv)
    for name in ("final_minutes", "minutes"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be > 0")
    if args.trials < 1 or args.workers < 1 or not 32 <= args.size <= 1024:
        p.error("--trials and --workers must be >= 1 and --size 32..1024")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    device = gpu_or_none(args.dry_run, args.data, "gpu_flow", "--dry-run")
    if device is None:
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.TemporaryDirectory()
    if args.dry_run:
        data, size = write_dataset(Path(tmp.name) / "faces", {"train": 16, "val": 4}, size=64, seed=0), 32
        proxy = ["--proxy-size", "32", "--proxy-epochs", "1", "--trials", "3", "--workers", "2", "--device", "cpu"]
        n_images = 8
    else:
        data, size = args.data, args.size
        proxy = ["--trials", str(args.trials), "--workers", str(args.workers)]
        n_images = 256
    n_train = check_data(data)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    recipe = [a for k, v in R85.items() for a in ("--set", f"{k}={v}")]

    t0 = time.perf_counter()
    step = write_step(args.out, "tier", tier(device, data, size, n_images, args.dry_run), t0)
    row = step["throughput"][0]
    print(f"gpu_flow: tier done: {step['device']}, dw_unet at {size} px {row['end_to_end']:.1f} img/s end to end, "
          f"efficiency {row['efficiency']:.2f}, sync-free {step['sync_check']['sync_free']}, peak memory "
          f"{step['peak_memory_gib'] or 0:.1f} GiB ({step['seconds']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    epochs = 1 if args.dry_run else final_epochs(row["end_to_end"], n_train, args.final_minutes)
    print(f"gpu_flow: final: dw_unet at R85, {size} px x {epochs} epochs", flush=True)
    run_module("train.final", "--preset", "dw_unet", *recipe, "--data", str(data), "--size", str(size), "--epochs",
               str(epochs), "--out", str(args.out / "final"), "--device", str(device), "--no-compile",
               log=args.out / "final.log")
    result = json.loads((args.out / "final" / "final.json").read_text())
    step = write_step(args.out, "final", {key: result[key] for key in (
        "val_f", "val_f_flip_tta", "val_f_raw", "size", "epochs", "fit_seconds", "params", "device")}, t0)
    print(f"gpu_flow: final done: val F {step['val_f']:.4f}, flip TTA {step['val_f_flip_tta']:.4f}, {step['size']} px "
          f"x {step['epochs']} epochs ({step['seconds']:.0f} s)", flush=True)

    t0 = time.perf_counter()
    left = args.minutes * 60 - (t0 - start)
    journal = args.out / "search.journal"
    journal.unlink(missing_ok=True)
    print(f"gpu_flow: search: up to {proxy[proxy.index('--trials') + 1]} trials, {left:.0f} s left", flush=True)
    run_module("search.run", "--data", str(data), "--storage", str(journal), "--study", STUDY, "--rung", "0",
               "--artifact-dir", str(args.out / "artifacts"), "--timeout", str(max(60.0, left - 30)), *proxy,
               log=args.out / "search.log")
    study = optuna.load_study(study_name=STUDY, storage=open_storage(str(journal), heartbeat=None))
    done = [t for t in study.trials if t.state.is_finished()]
    complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
    minutes = (time.perf_counter() - t0) / 60
    step = write_step(args.out, "search", {"trials": len(done), "complete": len(complete),
                                           "trials_per_gpu_minute": round(len(done) / minutes, 2),
                                           "best_proxy_f": max((t.value for t in complete), default=None),
                                           "proxy": study.user_attrs.get("proxy")}, t0)
    print(f"gpu_flow: search done: {step['trials']} trials ({step['complete']} complete), "
          f"{step['trials_per_gpu_minute']:.2f} per GPU-minute ({step['seconds']:.0f} s)", flush=True)
    tmp.cleanup()
    print(f"gpu_flow: all steps in {time.perf_counter() - start:.0f} s; {args.out}/tier.json, final.json, search.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
