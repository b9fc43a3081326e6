"""`python -m space.report --samples 2000 --seed 0`: sample the space with Optuna's RandomSampler (no
training) and print the parameter-count distribution, utilisation, distinct architectures and time per count.
The last line is `over_budget=<n> samples=<n> max_params=<n> median_utilisation=<x.xx>`."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import optuna

from space.budget import count_params
from space.config import BUDGET
from space.sample import sample_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m space.report", description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000, help="configs to sample (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="RandomSampler seed (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.samples < 1:
        parser.error(f"--samples must be >= 1, got {args.samples}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=args.seed))
    params, archs, sample_s = [], set(), 0.0
    for _ in range(args.samples):
        trial = study.ask()
        t0 = time.perf_counter()
        arch, _, _ = sample_config(trial)
        sample_s += time.perf_counter() - t0
        params.append(trial.user_attrs["params"])
        archs.add(arch.to_json())
        study.tell(trial, 0.0)
    t0 = time.perf_counter()
    for a in list(archs)[:200]:
        from space.config import ArchConfig
        count_params(ArchConfig.from_json(a))
    count_ms = 1000 * (time.perf_counter() - t0) / min(200, len(archs))
    p = np.array(params)
    util = p / BUDGET
    print(f"samples: {len(p)}  distinct architectures: {len(archs)}")
    print("params percentiles: " + "  ".join(f"p{q}={int(np.percentile(p, q)):,}" for q in (0, 10, 50, 90, 100)))
    hist, edges = np.histogram(util, bins=[0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0, 10])
    for h, lo, hi in zip(hist, edges[:-1], edges[1:]):
        print(f"  utilisation {lo:4.2f}-{min(hi, 9.99):4.2f}: {h:5d} {'#' * int(60 * h / len(p))}")
    print(f"time per count: {count_ms:.3f} ms; per sample (incl. width bisection): "
          f"{1000 * sample_s / len(p):.2f} ms")
    print(f"over_budget={int((p >= BUDGET).sum())} samples={len(p)} max_params={int(p.max())} "
          f"median_utilisation={np.median(util):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
