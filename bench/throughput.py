"""Training throughput: end-to-end (cached uint8 data -> augmentation in DataLoader workers -> device -> step,
through `train.loop.fit`) and model-only (the same model, batch and loss with tensors already on the device).
Their ratio is the data-pipeline efficiency. Prints one line per resolution.

    python -m bench.throughput --sizes 64 128 --batch 16 --preset deeplab_lite
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import optuna
import torch

from space.network import build_model
from space.presets import PRESETS
from space.sample import sample_config
from train.accel import Accel
from train.cli import parser as cli_parser
from train.cli import renamed
from train.data import Split, load_split
from train.infer import autocast, pick_device, to_tensor
from train.loop import fit, make_optimizer
from train.losses import SegLoss
from train.schedule import Stage
from train.synthetic import write_dataset


def model_only(arch, loss_cfg, train_cfg, size: int, batch: int, device: torch.device, steps: int) -> float:
    accel = Accel.of(device)  # the settings fit uses on this device
    model = build_model(arch).to(device).train()
    if accel.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, train_cfg, accel.fused_optimizer)
    criterion = SegLoss(loss_cfg).to(device)
    x = to_tensor(torch.randint(0, 255, (batch, size, size, 3), dtype=torch.uint8), device, accel.channels_last)
    y = torch.randint(0, 19, (batch, size, size), device=device)

    def step():
        with autocast(device, accel.bf16):
            out = model(x)
        main = out[0] if isinstance(out, tuple) else out
        loss = criterion(main, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def end_to_end(arch, loss_cfg, train_cfg, train: Split, val: Split, size: int, device: torch.device,
               workers: int, epochs: int) -> float:
    result = fit(build_model(arch), {size: (train, val)}, loss_cfg, train_cfg, schedule=(Stage(size, epochs),),
                 device=device, eval_every=epochs, workers=workers, progress=False)
    rates = [r["images_per_s"] for r in result.history[1:]]  # the first epoch warms up
    return statistics.median(rates)


def measure(sizes: list[int], preset: str, batch: int, device: torch.device, workers: int, n_images: int,
            epochs: int = 3, steps: int | None = None, data: Path | None = None) -> list[dict]:
    """End-to-end and model-only images/s and their ratio at each size (the rows `main` prints)."""
    arch, loss_cfg, train_cfg = sample_config(optuna.trial.FixedTrial(PRESETS[preset]))
    train_cfg = replace(train_cfg, batch_size=batch)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            root = data or write_dataset(Path(tmp) / f"s{size}", {"train": n_images, "val": 2}, size, seed=0)
            train = load_split(root, "train", size=size, limit=n_images)
            val = load_split(root, "val", size=size, limit=2, keep_full_masks=True)
            e2e = end_to_end(arch, loss_cfg, train_cfg, train, val, size, device, workers, epochs)
            raw = model_only(arch, loss_cfg, train_cfg, size, batch, device, steps or n_images // batch)
            rows.append({"size": size, "end_to_end": e2e, "model_only": raw, "efficiency": e2e / raw})
    return rows


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()} threads"


def main(argv: list[str] | None = None) -> int:
    p = cli_parser("python -m bench.throughput", __doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="resolutions (default: 64 128 on CPU, 256 512 on CUDA)")
    p.add_argument("--batch", type=int, default=16, help="batch size")
    p.add_argument("--preset", choices=sorted(PRESETS), default="deeplab_lite", help="architecture")
    p.add_argument("--images", type=int, default=None, help="training images per epoch (default 4 batches "
                   "on CPU, 16 on CUDA)")
    p.add_argument("--epochs", type=int, default=3, help="end-to-end epochs (the first is discarded)")
    p.add_argument("--steps", type=int, default=None, help="model-only timed steps (default: one epoch's)")
    p.add_argument("--loader-workers", type=int, default=None, help="DataLoader workers (default 0 CPU, 6 CUDA)")
    renamed(p, "--workers", "--loader-workers", "loader_workers", type=int)
    p.add_argument("--data", type=Path, default=None, help="dataset root; default a generated synthetic set")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    device = pick_device(args.device)
    cuda = device.type == "cuda"
    sizes = args.sizes or ([256, 512] if cuda else [64, 128])
    workers = args.loader_workers if args.loader_workers is not None else (6 if cuda else 0)
    n_images = args.images or args.batch * (16 if cuda else 4)
    print(f"device: {device_name(device)}; preset {args.preset}; batch {args.batch}; workers {workers}; "
          f"torch {torch.__version__}")
    for row in measure(sizes, args.preset, args.batch, device, workers, n_images, args.epochs, args.steps, args.data):
        print(f"size {row['size']:4d}: end-to-end {row['end_to_end']:8.1f} img/s  model-only "
              f"{row['model_only']:8.1f} img/s  efficiency {row['efficiency']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
