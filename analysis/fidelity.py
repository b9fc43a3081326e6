"""`python -m analysis.fidelity --study NAME --k K [--epochs E] [--size PX]`: can the proxy be trusted?

Retrains K finished trials chosen across the proxy ranking (evenly from the best to the median, not only the
top) at full fidelity, records their full F in the study (user attr `full_fidelity`, which the report reads),
and prints Kendall tau and Spearman rho between proxy F and full F.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import optuna

from analysis.common import ATTR, complete_trials, rank_correlations, recorded
from search.storage import DEFAULT_STORAGE, StorageError, load_existing_study
from space.network import build_model
from train.data import DataError, load_split
from train.final import FinalError, replay
from train.infer import pick_device
from train.loop import fit
from train.synthetic import resolve_data


def spread_across_ranking(trials: list[optuna.trial.FrozenTrial], k: int) -> list[optuna.trial.FrozenTrial]:
    """K trials evenly spaced from the best to the median of the proxy ranking."""
    ranked = sorted(trials, key=lambda t: -t.value)
    median_rank = (len(ranked) - 1) // 2
    picks = np.unique(np.round(np.linspace(0, median_rank, min(k, median_rank + 1))).astype(int))
    return [ranked[i] for i in picks]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.fidelity", description=__doc__.split("\n")[0])
    p.add_argument("--study", required=True, help="study name")
    p.add_argument("--k", type=int, required=True, help="number of trials to retrain")
    p.add_argument("--epochs", type=int, default=40, help="full-fidelity epochs")
    p.add_argument("--size", type=int, default=128, help="full-fidelity resolution (px)")
    p.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL or journal file path")
    p.add_argument("--data", type=Path, default=None, help="dataset root (default as in search.run)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = p.parse_args(argv)
    if args.k < 2:
        print(f"error: --k must be >= 2 to rank anything, got {args.k}", file=sys.stderr)
        return 2
    try:
        study = load_existing_study(args.storage, args.study)
        picks = spread_across_ranking(complete_trials(study), args.k)
        if len(picks) < 2:
            raise FinalError(f"study {args.study!r} has too few complete trials to compare ({len(picks)})")
        data = resolve_data(args.data)
        train = load_split(data, "train", size=args.size)
        val = load_split(data, "val", size=args.size, keep_full_masks=True)
        device = pick_device(args.device)
        results = dict(study.user_attrs.get(ATTR) or {})
        for i, trial in enumerate(picks, 1):
            arch, loss_cfg, train_cfg = replay(trial)
            fitted = fit(build_model(arch), train, val, loss_cfg, train_cfg, epochs=args.epochs, size=args.size,
                         device=device, eval_every=args.epochs, desc=f"fidelity {i}/{len(picks)} #{trial.number}")
            results[str(trial.number)] = {"f": fitted.final_f, "epochs": args.epochs, "size": args.size}
            study.set_user_attr(ATTR, results)  # saved after each retrain: nothing lost on a crash
            print(f"trial #{trial.number}: proxy F {trial.value:.4f} -> full F {fitted.final_f:.4f}", flush=True)
    except (StorageError, FinalError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    full = recorded(study)
    proxy = {t.number: t.value for t in complete_trials(study)}
    pairs = [(proxy[n], f) for n, f in full.items() if n in proxy]
    tau, rho = rank_correlations([a for a, _ in pairs], [b for _, b in pairs])
    if tau != tau:
        print("note: the scores of one side are all equal, so no ranking can be compared (train longer?)")
    print(f"kendall_tau={tau:.3f} spearman_rho={rho:.3f} trials={len(pairs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
