"""`python -m analysis.fidelity --study NAME --k K`: can the proxy be trusted?

Retrains K complete trials chosen across the proxy ranking (evenly from the best to the median, not only the top)
exactly as `train.final` trains (the same function and default schedule: initial weights from `--seed`, an EMA of
the weights, the same evaluation), records each full F in the study (user attr `full_fidelity:<trial>:<setting>`,
saved after each retrain, one per schedule, seed, EMA and data folder, so figures of other settings stay beside
it) and prints Kendall tau and Spearman rho between proxy F and full F.

`--proxy SIZE:EPOCHS:SUBSET` instead re-runs, under that proxy variant, every trial that has a full F, and scores
three ranking signals against the full F: the last val F, the mean of the last two evaluations, and the summed
training loss (lower is better). `--table` prints tau, rho, K and seconds per trial of every variant measured.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import torch

from analysis.common import complete_trials, rank_correlations
from search.records import (
    ATTR,
    HAND_ATTR,
    VARIANT_ATTR,
    FullSetting,
    full_records,
    full_settings,
    record_key,
    recorded,
    seed_spreads,
    variant_results,
)
from search.rung import proxy_text, train_at
from search.storage import DEFAULT_STORAGE, StorageError, load_existing_study
from space.config import ArchConfig, TrainConfig
from space.presets import PRESETS
from space.sample import SpaceError, replay, sample_config
from train.cli import parser
from train.data import DataError, SplitCache, resolve_data
from train.infer import DEVICE_DEFAULTS, device_defaults, pick_device, safe_load
from train.loop import EMA_DECAY, SIGNALS, full_fit
from train.schedule import (
    MAX_EPOCHS,
    MAX_SIZE,
    MIN_SIZE,
    ScheduleError,
    Stage,
    describe_schedule,
    format_schedule,
    parse_schedule,
    schedule_from_args,
    total_epochs,
)


class FidelityError(ValueError):
    """A problem that stops the command, with a one-line message."""


def spread_across_ranking(trials: list[optuna.trial.FrozenTrial], k: int) -> list[optuna.trial.FrozenTrial]:
    """K trials evenly spaced from the best to the median of the proxy ranking; when the top half holds fewer
    than K (a heavily pruned study), the spread reaches further down, so that K are still picked."""
    ranked = sorted(trials, key=lambda t: -t.value)
    last = max((len(ranked) - 1) // 2, min(k, len(ranked)) - 1)
    picks = np.unique(np.round(np.linspace(0, last, min(k, last + 1))).astype(int))
    return [ranked[i] for i in picks]


def parse_variant(text: str) -> tuple[tuple[Stage, ...], float]:
    """'96:4:0.4' -> (one stage of 4 epochs at 96 px, share 0.4); '128:4,256:2:1' -> (a resolution schedule, 1.0):
    the last field is the share of train, what precedes it a schedule as train.final takes it."""
    schedule, sep, subset = text.rpartition(":")
    try:
        stages, share = parse_schedule(schedule), float(subset)
        if not sep or ":" not in schedule or not 0 < share <= 1:
            raise ValueError
    except (ValueError, ScheduleError):
        raise FidelityError(f"--proxy {text!r}: expected SIZE:EPOCHS[,SIZE:EPOCHS...]:SUBSET with sizes "
                            f"{MIN_SIZE}..{MAX_SIZE} that never decrease, epochs 1..{MAX_EPOCHS} and 0 < SUBSET <= 1, "
                            f"e.g. 96:4:0.4 or 128:4,256:2:1") from None
    return stages, share


def variant_name(stages: tuple[Stage, ...], subset: float) -> str:
    """'96x4x0.4' for one stage (the records' names since the first variant), '128x4-256x2x1' for a schedule."""
    return "-".join(f"{st.size}x{st.epochs}" for st in stages) + f"x{subset:g}"


def data_root(study: optuna.Study, given: Path | None) -> Path:
    """--data, else the folder the study was searched on (exit 2 if it is gone), else the default data."""
    if given is not None:
        return Path(given)
    recorded_data = study.user_attrs.get("data")
    if recorded_data is None:
        return resolve_data(None)
    if not Path(recorded_data).is_dir():
        raise FidelityError(f"study {study.study_name!r} was searched on {recorded_data}, which is gone; "
                            f"pass --data ROOT")
    return Path(recorded_data)


def full_setting(args: argparse.Namespace, study: optuna.Study) -> tuple[tuple[Stage, ...], FullSetting]:
    """The full-fidelity schedule (`--size`/`--epochs`, default the device's `train.final` default) and the
    setting its records are keyed by."""
    schedule = schedule_from_args(args.size, args.epochs, device_defaults(pick_device(args.device))["final_schedule"])
    data = data_root(study, args.data)
    return schedule, FullSetting(format_schedule(schedule), args.seed, args.ema, str(data.resolve()))


def retrain(args: argparse.Namespace, items: list[int | str], threads: int) -> None:
    """Full-fidelity retrains (one process's share), each recorded as soon as it is done, keyed by trial and
    setting (schedule, seed, EMA, data folder): trial numbers are replayed from the study; preset names are
    trained at their own hand recipe, not the study's fixed one (the baseline that tells what the study's recipe
    buys, in the report's recipe/architecture table)."""
    if threads:
        torch.set_num_threads(threads)
    study = load_existing_study(args.storage, args.study)
    schedule, setting = full_setting(args, study)
    splits = SplitCache(Path(setting.data))
    device = pick_device(args.device)
    for item in items:
        key = record_key(ATTR if isinstance(item, int) else HAND_ATTR, item, setting)
        done = study.user_attrs.get(key) or next((v for i, s, v in full_records(
            study, ATTR if isinstance(item, int) else HAND_ATTR) if i == str(item) and s == setting), None)
        if done:
            print(f"{key}: already recorded at {setting.describe()} (F {done['f']:.4f}), skipped", flush=True)
            continue  # a re-run of the same command resumes where an interrupted one stopped
        if isinstance(item, int):
            trial = study.trials[item]
            configs, said = replay(trial), f"trial #{item}: proxy F {proxy_text(trial.value)} ->"
        else:
            configs = sample_config(optuna.trial.FixedTrial(PRESETS[item]))
            said = f"preset {item} at its hand recipe:"
        arch, loss_cfg, train_cfg = configs
        t0 = time.perf_counter()
        _, fitted = full_fit(arch, splits, loss_cfg, train_cfg, schedule=schedule, seed=args.seed, ema=args.ema,
                             device=device, desc=key)
        seconds = round(time.perf_counter() - t0, 1)
        study.set_user_attr(key, {"f": fitted.final_f, "seconds": seconds, "per_class_f": fitted.per_class_f,
                                  **dataclasses.asdict(setting)})
        print(f"{said} full F {fitted.final_f:.4f} at {setting.describe()} ({seconds:.0f} s)", flush=True)


def record_final(study: optuna.Study, number: int, folder: Path) -> str:
    """Record a finished `train.final --trial N` (or `--preset` with the trial's params) run as trial N's full F:
    the same function at the same setting, so retraining it here would repeat it. Its checkpoint must hold the
    trial's replayed configs and train only on train; the record says where it came from."""
    last, summary = folder / "last.pth", folder / "final.json"
    if not last.is_file() or not summary.is_file():
        raise FidelityError(f"{folder}: not a finished train.final output folder (last.pth and final.json expected)")
    saved, result = safe_load(last), json.loads(summary.read_text())
    arch, loss_cfg, train_cfg = replay(study.trials[number])
    train_cfg = dataclasses.replace(train_cfg, ema=result.get("ema", saved["train"]["ema"]))
    expected = {"config": arch.to_dict(), "loss": loss_cfg.to_dict(), "train": train_cfg.to_dict(),
                "include_val": False}
    saved["config"] = ArchConfig.normalised(saved.get("config") or {})
    if isinstance(saved.get("train"), dict):  # a run of older code: settings added since at their defaults
        saved["train"] = TrainConfig.normalised(saved["train"])
    differs = [k for k, v in expected.items() if saved.get(k) != v]
    if differs or saved["epoch"] < total_epochs(parse_schedule(saved["schedule"])):
        raise FidelityError(f"{folder} is not a finished run of trial #{number}'s configs on train only (differs "
                            f"in {', '.join(differs) or 'epochs: unfinished'})")
    setting = FullSetting(saved["schedule"], saved["seed"], train_cfg.ema, saved["data"])
    key = record_key(ATTR, number, setting)
    study.set_user_attr(key, {"f": result["val_f"], "seconds": result.get("fit_seconds"),
                              "source": f"train.final {folder}", **dataclasses.asdict(setting)})
    return f"trial #{number}: full F {result['val_f']:.4f} at {setting.describe()} recorded from {folder}"


def rerun_proxy(args: argparse.Namespace, numbers: list[int], threads: int) -> None:
    """Re-run the proxy of `numbers` under `args.proxy` exactly as the search's second rung trains a promoted
    trial (search.rung.train_at: same function, same seed rule), so a variant's tau is the rung's; a variant
    already recorded for a trial is skipped (a re-run resumes)."""
    if threads:
        torch.set_num_threads(threads)
    stages, subset = parse_variant(args.proxy)
    name = variant_name(stages, subset)
    study = load_existing_study(args.storage, args.study)
    splits = SplitCache(data_root(study, args.data), subset=subset)
    device = pick_device(args.device)
    seed = (study.user_attrs.get("proxy") or {}).get("seed", 0)
    for number in numbers:
        key = f"{VARIANT_ATTR}:{name}:{number}"
        if key in study.user_attrs:
            print(f"{key}: already recorded, skipped", flush=True)
            continue
        found = train_at(study.trials[number], splits, format_schedule(stages), seed, device,
                         desc=f"proxy {name} #{number}")
        study.set_user_attr(key, found)
        print(f"trial #{number}: proxy {name} last F {found['last_f']:.4f} ({found['seconds']:.0f} s)", flush=True)


def run_parallel(target, args: argparse.Namespace, numbers: list[int]) -> int:
    """`target` over `numbers`, split across `args.workers` processes (one thread each share of the cores)."""
    if args.workers == 1:
        target(args, numbers, 0)
        return 0
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=target, args=(args, numbers[i::args.workers], threads)) for i in range(args.workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return sum(1 for proc in procs if proc.exitcode)


CLOSE = 0.01  # full F apart: a "close pair", the kind that decides which network ships


def close_pairs(scores: list[float], truth: list[float], close: float = CLOSE) -> tuple[int, float]:
    """(number of pairs whose full F differ by less than `close`, share of them the scores order right)."""
    pairs = [(i, j) for i in range(len(truth)) for j in range(i + 1, len(truth)) if abs(truth[i] - truth[j]) < close]
    right = sum((scores[i] - scores[j]) * (truth[i] - truth[j]) > 0 for i, j in pairs)
    return len(pairs), (right / len(pairs) if pairs else float("nan"))


def study_signals(trial: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The study's own proxy run under each signal, from its reported per-epoch val F (its value when it reported
    none)."""
    evals = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)] or [trial.value]
    return {"last_f": evals[-1], "mean_last2_f": float(np.mean(evals[-2:]))}


def table(study: optuna.Study, setting: FullSetting | None = None) -> str:
    """A markdown table: the study's proxy and each proxy variant, per signal, against the full F recorded at
    `setting` (default the most recorded one): rank correlations, close pairs (full F < CLOSE apart) and how many
    of them come out right, CPU-seconds per trial and tau per CPU-minute (the default proxy is chosen on it)."""
    full = recorded(study, setting)
    rows = ["| proxy variant | signal | Kendall tau | Spearman rho | K | close pairs | close pairs right | "
            "seconds per trial | tau per CPU-minute |", "|---|---|---|---|---|---|---|---|---|"]

    def row(name: str, signal: str, scores: list[float], truth: list[float], seconds: float) -> str:
        tau, rho = rank_correlations(scores, truth)
        n_close, right = close_pairs(scores, truth)
        return (f"| {name} | {signal} | {tau:.3f} | {rho:.3f} | {len(scores)} | {n_close} | {right:.0%} | "
                f"{seconds:.0f} | {tau / (seconds / 60):.3f} |")

    proxy = {t.number: t for t in complete_trials(study) if t.number in full}
    seconds = np.mean([t.duration.total_seconds() for t in proxy.values()]) if proxy else float("nan")
    for signal in ("last_f", "mean_last2_f"):
        rows.append(row("as searched (study)", signal, [study_signals(t)[signal] for t in proxy.values()],
                        [full[n] for n in proxy], seconds))
    for name, found in sorted(variant_results(study).items()):
        both = [n for n in found if n in full]
        seconds = np.mean([found[n]["seconds"] for n in both])
        for signal in SIGNALS:
            rows.append(row(name, signal, [found[n][signal] for n in both], [full[n] for n in both], seconds))
    return "\n".join(rows)


def spread_line(study: optuna.Study, setting: FullSetting) -> str:
    """One line: the seed spread (max - min full F over seeds) of each trial recorded at several seeds."""
    spreads = seed_spreads(study, setting)
    if not spreads:
        return "seed spread: no trial recorded at more than one seed at this schedule (run train.final --seed S)"
    return "seed spread of the full runs (max - min over seeds): " + ", ".join(
        f"#{n} {max(seeds.values()) - min(seeds.values()):.4f} (seeds {', '.join(map(str, sorted(seeds)))})"
        for n, seeds in spreads.items())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m analysis.fidelity", __doc__, epilog="Details: docs/analysis.md.")
    g = p.add_argument_group("study")
    g.add_argument("--study", required=True, help="study name")
    g.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL or journal file path")
    g.add_argument("--data", type=Path, default=None, help="dataset root (default: the study's own data folder)")
    g = p.add_argument_group("the full-fidelity setting (as train.final)")
    g.add_argument("--k", type=int, default=8, help="number of trials to retrain (spread from best to median)")
    g.add_argument("--size", default=None, metavar="SIZE|SIZE:EPOCHS,...",
                   help="a resolution schedule, or a size with --epochs (default train.final's: "
                        f"{DEVICE_DEFAULTS['cpu']['final_schedule']} CPU, {DEVICE_DEFAULTS['cuda']['final_schedule']} "
                        "CUDA); each setting keeps its own records")
    g.add_argument("--epochs", type=int, default=None, help="epochs at --size SIZE")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights and data order")
    g.add_argument("--ema", type=float, default=EMA_DECAY, help="EMA decay of the weights")
    g = p.add_argument_group("instead of retraining")
    g.add_argument("--proxy", default=None, metavar="SIZE:EPOCHS[,...]:SUBSET",
                   help="re-run this proxy variant (e.g. 96:4:0.4, 128:4,256:2:1) on every trial with a full F, as "
                        "the second rung trains")
    g.add_argument("--every", action="store_true", help="with --proxy: every complete trial, not only those with a "
                                                        "full F")
    g.add_argument("--table", action="store_true",
                   help="only print the proxy and every variant measured against the full F at the setting named")
    g.add_argument("--hand-recipe", action="append", default=[], choices=sorted(PRESETS), metavar="PRESET",
                   help="retrain this preset at its own hand recipe (repeatable): the report's recipe baseline")
    g.add_argument("--from-final", type=Path, default=None, metavar="OUT",
                   help="record a finished train.final run of --trial N as that trial's full F (checked: its own "
                        "configs, train only)")
    g.add_argument("--trial", type=int, default=None, help="the trial --from-final ran")
    g = p.add_argument_group("machine")
    g.add_argument("--workers", type=int, default=1, help="parallel processes (the cores are split between them)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.k < 2 or args.workers < 1:
            raise FidelityError(f"--k must be >= 2 to rank anything and --workers >= 1, got {args.k}, {args.workers}")
        if args.proxy:
            parse_variant(args.proxy)
        study = load_existing_study(args.storage, args.study)
        schedule, setting = full_setting(args, study)
        recorded_settings = full_settings(study)
        if (args.table or args.proxy) and args.size is None and args.epochs is None and recorded_settings:
            setting = recorded_settings[0][0]  # reading: the setting with the most records unless one is named
        if args.table:
            print(f"full fidelity: {setting.describe()} on {setting.data}")
            print(table(study, setting))
            print(spread_line(study, setting))
            return 0
        if args.from_final:
            if args.trial is None:
                raise FidelityError("--from-final needs --trial N (the trial the run replayed)")
            print(record_final(study, args.trial, args.from_final))
            return 0
        if args.hand_recipe:
            failed = run_parallel(retrain, args, args.hand_recipe)
        elif args.proxy:
            numbers = (sorted(t.number for t in complete_trials(study)) if args.every
                       else sorted(recorded(study, setting)))
            if len(numbers) < 2:
                raise FidelityError(f"study {args.study!r} has {len(numbers)} full-fidelity results; run "
                                    f"`python -m analysis.fidelity --study {args.study} --k K` first")
            failed = run_parallel(rerun_proxy, args, numbers)
        else:
            picks = spread_across_ranking(complete_trials(study), args.k)
            if len(picks) < 2:
                raise FidelityError(f"study {args.study!r} has too few complete trials to compare ({len(picks)})")
            print(f"fidelity: retraining trials {', '.join(f'#{t.number}' for t in picks)} at "
                  f"{describe_schedule(schedule)} (seed {args.seed}, EMA {args.ema})", flush=True)
            failed = run_parallel(retrain, args, [t.number for t in picks])
    except (StorageError, FidelityError, SpaceError, DataError, ScheduleError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if failed:
        print(f"error: {failed} worker(s) ended with an exception (traceback above)", file=sys.stderr)
        return 1
    study = load_existing_study(args.storage, args.study)
    full = recorded(study, setting)
    proxy = {t.number: t.value for t in complete_trials(study)}
    pairs = [(proxy[n], f) for n, f in full.items() if n in proxy]
    tau, rho = rank_correlations([a for a, _ in pairs], [b for _, b in pairs])
    if tau != tau:
        print("note: the scores of one side are all equal, so no ranking can be compared (train longer?)")
    print(f"kendall_tau={tau:.3f} spearman_rho={rho:.3f} trials={len(pairs)}")
    if args.proxy:
        print(table(study, setting))
    return 0


if __name__ == "__main__":
    sys.exit(main())
