"""`python -m bench.schedule --data ROOT --schedules 128:40 256:20 128:24,256:12`: what a resolution schedule
costs on this machine, alone.

Times, for each size the schedules use, the decoding of the data, one training epoch and one scoring of val (as
`train.final` runs them: `full_fit` with its EMA, so each scoring is two evaluations, EMA and raw weights), then
prints each schedule's predicted wall time: decoding + epochs x epoch time + scorings x scoring time, with the
scorings `full_fit` makes (about ten, and the end of every stage). Run it on idle cores: the figure is what the
default's "<= 45 minutes alone on 2 threads" rule reads.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import optuna
import torch

from space.presets import PRESETS
from space.sample import check_params, parse_assignments, sample_config
from train.cli import parser as cli_parser
from train.data import SplitCache
from train.infer import pick_device
from train.loop import FULL_EVALS, evaluate, full_fit
from train.schedule import Stage, last_epochs, parse_schedule, total_epochs


def scorings(schedule: tuple[Stage, ...]) -> dict[int, int]:
    """Size -> number of val scorings `full_fit` makes in `schedule`."""
    epochs, ends = total_epochs(schedule), last_epochs(schedule)
    every = max(1, epochs // FULL_EVALS)
    counts: dict[int, int] = {}
    end = 0
    for stage in schedule:
        for epoch in range(end + 1, end + stage.epochs + 1):
            if epoch % every == 0 or epoch in ends:
                counts[stage.size] = counts.get(stage.size, 0) + 1
        end += stage.epochs
    return counts


def measure_size(splits: SplitCache, size: int, configs, device: torch.device) -> dict[str, float]:
    """Seconds to decode the data at `size`, to train one epoch and to score val once (EMA + raw)."""
    arch, loss_cfg, train_cfg = configs
    t0 = time.perf_counter()
    splits[size]
    decode = time.perf_counter() - t0
    model, result = full_fit(arch, splits, loss_cfg, train_cfg, schedule=(Stage(size, 1),), seed=0, device=device,
                             progress=False)
    epoch = result.history[0]["seconds"]
    t0 = time.perf_counter()
    evaluate(model, splits[size][1], device)
    return {"decode_s": decode, "epoch_s": epoch, "score_s": 2 * (time.perf_counter() - t0)}


def main(argv: list[str] | None = None) -> int:
    p = cli_parser("python -m bench.schedule", __doc__)
    p.add_argument("--data", type=Path, required=True, help="dataset root (challenge layout)")
    p.add_argument("--schedules", nargs="+", required=True, metavar="SIZE:EPOCHS[,SIZE:EPOCHS]",
                   help="schedules to price")
    p.add_argument("--preset", choices=sorted(PRESETS), default="dw_unet", help="the network timed")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a parameter of the preset (batch_size matters for speed), as train.final --set")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    try:
        schedules = [parse_schedule(s) for s in args.schedules]
        values = check_params(parse_assignments(args.set, "--set"), "--set")
        configs = sample_config(optuna.trial.FixedTrial({**PRESETS[args.preset], **values}))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    device = pick_device(args.device)
    splits = SplitCache(args.data)
    sizes = sorted({stage.size for schedule in schedules for stage in schedule})
    print(f"{args.preset}, batch {configs[2].batch_size}, on {device} with {torch.get_num_threads()} thread(s)")
    cost = {}
    for size in sizes:
        cost[size] = measure_size(splits, size, configs, device)
        c = cost[size]
        print(f"  {size} px: decode {c['decode_s']:.0f} s, one epoch {c['epoch_s']:.1f} s, one scoring "
              f"{c['score_s']:.1f} s", flush=True)
    for text, schedule in zip(args.schedules, schedules):
        n_scores = scorings(schedule)
        total = sum(cost[s.size]["epoch_s"] * s.epochs for s in schedule) + sum(
            cost[size]["score_s"] * n for size, n in n_scores.items()) + sum(
            cost[size]["decode_s"] for size in {s.size for s in schedule})
        print(f"{text:>16}: {total / 60:5.1f} min predicted ({total_epochs(schedule)} epochs, "
              f"{sum(n_scores.values())} scorings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
