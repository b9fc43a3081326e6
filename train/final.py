"""`python -m train.final --study best`: retrain the best architecture at full fidelity, predict the test set
and write a checked challenge submission.

The trial's params are replayed through the same `space.sample.sample_config` (`optuna.trial.FixedTrial`), so
search and retraining cannot drift apart. Every epoch is checkpointed to OUT/last.pth; re-running the same
command after an interruption resumes from it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import optuna
import torch

from search.plan import BUDGET_ATTR, PLAN_ATTR, left_s, made_under, say_minutes
from search.records import recipe_and_architecture
from search.rung import best_by_rung, current_setting, rung_records, unfinished_note, verdict
from search.storage import DEFAULT_STORAGE, StorageError, open_storage, pick_trial, require_study, study_names
from space.budget import count_flops, count_params
from space.config import BUDGET, ArchConfig, TrainConfig
from space.presets import PRESETS
from space.sample import SpaceError, as_trial, parse_assignments, replay
from train.cli import parser, renamed
from train.data import DataError, SplitCache, list_split, load_split, resolve_data
from train.imageops import describe_sizes
from train.infer import (
    DEVICE_DEFAULTS,
    device_defaults,
    load_rgb,
    pick_device,
    predict_mask,
    safe_load,
    save_mask,
)
from train.loop import EMA_DECAY, FitResult, evaluate, full_fit
from train.metric import Scorer
from train.report_pdf import ReportError, write_pdf
from train.scale import Row, choose
from train.scale import table as scale_table
from train.schedule import (
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
from train.solution import write_solution


class FinalError(ValueError):
    """A problem that stops the retraining, with a one-line message."""


@dataclass
class Chosen:
    study: str
    trial: optuna.trial.FrozenTrial
    data: str | None = None  # the data folder the study was searched on (study user attr `data`)
    decided_by: str = "the proxy"  # what picked the trial: --trial, the proxy, or the second rung
    plan: dict | None = None  # the study's time-budget plan for this trial (search.plan): its schedule, minutes left


def most_recent(storage: optuna.storages.BaseStorage, names: list[str]) -> str:
    """The study with the latest finished (else started) trial."""
    def last(name: str) -> float:
        times = [t.datetime_complete or t.datetime_start for t in
                 optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)]
        return max((t.timestamp() for t in times if t is not None), default=0.0)
    return max(names, key=last)


def choose_trial(storage: optuna.storages.BaseStorage, study: str, number: int | None) -> Chosen:
    """The trial to retrain: `--trial N` or the best trial of one study. F values of different studies (other
    data, other proxy settings) are never compared: `--study best` means the storage's only study, or with
    several the most recent one, named in a note with the others."""
    names = study_names(storage)
    if not names:
        raise FinalError("the storage holds no studies; run `python -m search.run` first")
    if study == "best" and len(names) > 1:
        if number is not None:
            raise FinalError(f"--trial needs --study NAME (studies: {', '.join(names)})")
        study = most_recent(storage, names)
        print(f"note: --study best: {len(names)} studies in this storage; using the most recent, {study!r} "
              f"(others: {', '.join(n for n in names if n != study)}; pass --study NAME for another)", flush=True)
    elif study == "best":
        study = names[0]
    require_study(storage, study)
    loaded = optuna.load_study(study_name=study, storage=storage)
    chosen = _chosen(loaded, number)
    plan, budget = loaded.user_attrs.get(PLAN_ATTR) or {}, loaded.user_attrs.get(BUDGET_ATTR) or {}
    entry = plan.get("schedules", {}).get(str(chosen.trial.number))
    if entry and budget and not made_under(plan, budget):  # searched again under a newer budget
        print(f"note: study {study!r}: its time-budget plan was made under an earlier budget, and the search under "
              f"the current one has not finished (re-run the search command to plan): the plan is not followed",
              flush=True)
        entry = None
    return dataclasses.replace(chosen, plan={**entry, "minutes_left": plan["minutes_left"], "budget": budget or None}
                               if entry else None)


def _chosen(loaded: optuna.Study, number: int | None) -> Chosen:
    study, data = loaded.study_name, loaded.user_attrs.get("data")
    if number is not None:
        return Chosen(study, pick_trial(loaded, number), data, "--trial")
    note = unfinished_note(loaded)
    if note:
        print(f"note: {note}", flush=True)
    by_rung = best_by_rung(loaded)
    if by_rung is None:
        return Chosen(study, pick_trial(loaded, None), data, "the proxy (best proxy F; no second rung recorded)")
    trial, record = by_rung
    setting = current_setting(loaded)
    return Chosen(study, trial, data, f"the second rung ({setting.describe()}): rung-2 F {record['f']:.4f} of "
                                      f"{len(rung_records(loaded))} promoted trials; {verdict(loaded)}")


def choose_data(given: Path | None, chosen: Chosen) -> Path:
    """The study's own data folder unless --data says otherwise (then a one-line note); presets and studies
    that recorded none fall back to `resolve_data`."""
    if chosen.data is None:
        return resolve_data(given)
    recorded = Path(chosen.data)
    if given is None:
        if not recorded.is_dir():
            raise FinalError(f"study {chosen.study!r} was searched on {recorded}, which is gone; pass --data ROOT")
        return recorded
    if Path(given).resolve() != recorded.resolve():
        print(f"note: --data {given}: retraining on other data than the study was searched on ({recorded})",
              flush=True)
    return Path(given)


def preset_trial(name: str) -> Chosen:
    """A hand-designed preset as a trial (in memory), so baselines go through the same replay as searched nets."""
    if name not in PRESETS:
        raise FinalError(f"unknown preset {name!r}; available: {', '.join(sorted(PRESETS))}")
    return Chosen(f"preset-{name}", as_trial(PRESETS[name], {"preset": name}), decided_by="--preset (hand-designed)")


def describe_arch(arch: ArchConfig) -> str:
    stages = ", ".join(f"{s.depth}x {s.block}{'(e' + str(s.expansion) + ')' if s.block == 'ir' else ''} "
                       f"k{s.kernel}{' SE' if s.se else ''} w{s.width}" for s in arch.stages)
    skips = " + ".join(n for n, on in (("1/8", arch.skip8), ("1/4", arch.skip4), ("1/2", arch.skip2)) if on) or "none"
    ctx = {"aspp": f"ASPP rates {'/'.join(map(str, arch.context_rates))}", "ppm": "pyramid pooling",
           "none": "1x1 conv"}[arch.context]
    return (f"stem w{arch.stem_width}; stages: {stages}; output stride {arch.output_stride} "
            f"(dilations {'/'.join(map(str, arch.dilations))}); context: {ctx}, width {arch.context_width}; "
            f"decoder skips {skips}, width {arch.decoder_width}, depth {arch.decoder_depth}"
            f"{', CBAM after each step' if arch.decoder_cbam else ''}"
            f"{'; detail path w' + str(arch.detail_width) if arch.detail_width else ''}; {arch.activation}"
            f"{'; auxiliary head in training (not exported)' if arch.aux_head else ''}")


def _check_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be created or written, without creating anything yet."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise FinalError(f"output folder {folder} is not writable ({existing} is a file)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise FinalError(f"output folder {folder} is not writable (no write permission on {existing})")


def _save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def export_checkpoint(model: torch.nn.Module, arch: ArchConfig, size: int, path: Path,
                      predict_sizes: tuple[int, ...] | None = None) -> int:
    """Drop the auxiliary head and save {config, weights, training size, prediction sizes (default the training
    size)}; refuses (writes nothing) at or over budget."""
    model.drop_aux()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if params >= BUDGET:
        raise FinalError(f"exported model has {params:,} parameters; the limit is < {BUDGET:,}: not exported")
    _save_atomic({"config": arch.to_dict(), "state_dict": model.state_dict(), "size": size, "num_classes": 19,
                  "predict_sizes": list(predict_sizes or (size,)), "params": params}, path)
    return params


def strict_json(record: dict) -> str:
    """`record` as strict JSON: a NaN or infinite figure (one not measured) is written as null, never as NaN."""
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value
    return json.dumps(clean(record), indent=1, allow_nan=False)


def write_history(history: list[dict], path: Path) -> None:
    """The per-epoch history (loss, lr, seconds, images/s, val F where evaluated) as CSV, replaced atomically."""
    import pandas as pd

    pd.DataFrame(history).to_csv(path.with_suffix(".tmp"), index=False)
    os.replace(path.with_suffix(".tmp"), path)


def _curve(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["loss"] for h in history], label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ev = [h for h in history if "val_f" in h]
    ax2 = ax.twinx()
    ax2.plot([h["epoch"] for h in ev], [h["val_f"] for h in ev], "o-", color="tab:orange", label="val F")
    ax2.set_ylabel("val F-measure")
    fig.legend(loc="lower center", ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _f(value: float) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def write_report(out: Path, chosen: Chosen, arch: ArchConfig, params: int, scorer: Scorer, result: FitResult,
                 args: argparse.Namespace, schedule: tuple[Stage, ...], tta_f: float, sizes: tuple[int, ...],
                 rows: list[Row]) -> None:
    _curve(result.history, out / "training_curve.png")
    held_out = "" if not args.include_val else " (not held out: --include-val trained on it)"
    text = f"""# Final model: study {chosen.study!r}, trial {chosen.trial.number}

- parameters: {params:,} ({params / BUDGET:.1%} of the {BUDGET:,} limit; auxiliary head not exported)
- trained: {describe_schedule(schedule)} (seed {args.seed}) on {'train + val' if args.include_val else 'train'};
  predicts at {describe_sizes(sizes)}; proxy F of the
  trial: {'n/a' if chosen.trial.value is None else f"{chosen.trial.value:.4f}"}
- **val F-measure{held_out}: {scorer.f_measure:.4f}** over {len(scorer.scores)} images, logits upsampled to the
  mask resolution before the argmax; mIoU {scorer.miou():.4f}
- levers on the same weights: {"EMA off" if not args.ema else f"EMA {args.ema} (raw weights: {_f(result.raw_f)})"};
  with flip TTA at prediction: {tta_f:.4f} (test masks written {"with" if args.flip_tta else "without"} it)

## Prediction setting
{prediction_note(rows, sizes, args)}

## Architecture
{describe_arch(arch)}

## Per-class F1 on val
```
{scorer.table()}
```

## Training curve
![training curve](training_curve.png)
"""
    (out / "report.md").write_text(text)


def prediction_note(rows: list[Row], sizes: tuple[int, ...], args: argparse.Namespace) -> str:
    if not rows:
        return f"Fixed by --predict-sizes: {describe_sizes(sizes)} (nothing compared)."
    return (f"Chosen on val among these (train.scale: the training size unless another setting beats it by more "
            f"than 0.001; the chosen F is the best of {len(rows)} on the same images, so slightly optimistic):\n\n"
            f"{scale_table(rows, sizes, args.flip_tta)}")


def parse_predict_sizes(text: str) -> tuple[int, ...] | None:
    """--predict-sizes: None for 'auto', else the sizes of 'S' or 'S+S'; a FinalError naming the value."""
    if text == "auto":
        return None
    try:
        sizes = tuple(int(v) for v in text.split("+"))
    except ValueError:
        sizes = ()
    if not sizes or len(sizes) > 4 or not all(MIN_SIZE <= v <= MAX_SIZE for v in sizes):
        raise FinalError(f"--predict-sizes {text!r}: expected auto, SIZE or SIZE+SIZE with sizes "
                         f"{MIN_SIZE}..{MAX_SIZE} px")
    return sizes


def found_by(chosen: Chosen, storage: optuna.storages.BaseStorage | None) -> dict:
    """How the network was found, for the report: a hand-designed preset, or the study's trials, proxy, fixed
    params and (when recorded) what the recipe and the architecture each bought."""
    if storage is None:
        return {"kind": "preset", "name": chosen.study.removeprefix("preset-")}
    study = optuna.load_study(study_name=chosen.study, storage=storage)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    return {"kind": "study", "study": chosen.study, "trials": len(states),
            "complete": states.count(optuna.trial.TrialState.COMPLETE),
            "pruned": states.count(optuna.trial.TrialState.PRUNED), "proxy": study.user_attrs.get("proxy"),
            "fixed": study.user_attrs.get("fixed"), "proxy_f": chosen.trial.value, "decided_by": chosen.decided_by,
            "rung": current_setting(study).describe() if current_setting(study) else None, "verdict": verdict(study),
            "recipe_vs_architecture": [list(row) for row in recipe_and_architecture(study)]}


def predict_test(model: torch.nn.Module, data: Path, sizes: tuple[int, ...], device: torch.device,
                 masks_dir: Path, flip_tta: bool) -> int:
    try:
        images = list_split(data, "test")
    except DataError:
        return 0
    masks_dir.mkdir(parents=True, exist_ok=True)
    for pair in images:
        save_mask(predict_mask(model, load_rgb(pair.image), sizes, device, flip_tta),
                  masks_dir / f"{pair.image.stem}.png")
    return len(images)


def write_zip(out: Path) -> Path:
    path, tmp = out / "submission.zip", out / "submission.zip.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for sub in ("masks", "solution"):
            for f in sorted((out / sub).iterdir()):
                z.write(f, f"{sub}/{f.name}")
    os.replace(tmp, path)
    return path


def _what(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--study", default="best",
                   help="study name; 'best' = the storage's only study, or its most recent one (named in a note)")
    g.add_argument("--trial", type=int, default=None, help="retrain this trial instead of the study's pick")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="train a hand-designed preset instead of a searched trial (baselines)")
    g.add_argument("--storage", default=DEFAULT_STORAGE, help="Optuna storage URL or journal file path")
    g.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override one of the trial's parameters (repeatable), e.g. --set class_weight_power=0.25")


def _training(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", type=Path, default=None,
                   help="dataset root; default the folder the study was searched on (a preset: as in search.run)")
    g.add_argument("--size", default=None, metavar="SIZE|SIZE:EPOCHS,...",
                   help="a resolution schedule, e.g. 128:24,256:12 (24 epochs at 128 px, then 12 at 256), or a "
                        "size with --epochs; default: the study's time-budget plan, else "
                        f"{DEVICE_DEFAULTS['cpu']['final_schedule']} CPU, {DEVICE_DEFAULTS['cuda']['final_schedule']} "
                        "CUDA (docs/results.md)")
    g.add_argument("--epochs", type=int, default=None, help="epochs at --size SIZE (left out with a schedule)")
    g.add_argument("--seed", type=int, default=0, help="seed of the initial weights, data order and augmentation")
    g.add_argument("--include-val", action="store_true", help="fit on train + val (once the schedule is chosen)")
    g.add_argument("--ema", type=float, default=EMA_DECAY,
                   help="decay of the weights' moving average that is evaluated and exported (0 = off)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    g.add_argument("--loader-workers", type=int, default=None, metavar="N",
                   help="DataLoader worker processes (default 0 CPU, 6 CUDA)")
    renamed(g, "--workers", "--loader-workers", "loader_workers", type=int)
    g.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                   help="train through torch.compile (pays off on CUDA for long runs)")


def _prediction(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--out", type=Path, default=None, help="output folder (default studies/<study>/final)")
    g.add_argument("--flip-tta", action=argparse.BooleanOptionalAction, default=True,
                   help="write the test masks with flip TTA, as the shipped run.py does")
    g.add_argument("--predict-sizes", default="auto", metavar="auto|SIZE|SIZE+SIZE",
                   help="the input size(s) the model predicts at: auto chooses on val among 0.875x-1.25x the "
                        "training size (docs/deliverables.md); SIZE+SIZE averages two sizes' logits")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m train.final", __doc__, epilog="Details: docs/deliverables.md.")
    for title, add in (("what to train", _what), ("training", _training), ("prediction and output", _prediction)):
        add(p.add_argument_group(title))
    return p.parse_args(argv)


def check_resume(last: Path, identity: dict) -> dict:
    """The checkpoint in OUT/last.pth when it is one of this very run (same configs, schedule, seed, data folder,
    --include-val), else a one-line FinalError naming what differs."""
    try:
        saved = safe_load(last)
    except ValueError as e:
        raise FinalError(f"{e}; use another --out or delete it") from None
    if isinstance(saved.get("config"), dict):
        saved["config"] = ArchConfig.normalised(saved["config"])
    if isinstance(saved.get("train"), dict):  # settings added since (rfs_threshold) take their defaults
        saved["train"] = TrainConfig.normalised(saved["train"])
    shown = ("schedule", "seed", "data", "include_val")
    mismatched = [f"{k} ({saved.get(k)!r} -> {identity[k]!r})" if k in shown else k
                  for k in identity if saved.get(k) != identity[k]]
    if mismatched:
        raise FinalError(f"{last} is a checkpoint of another run (differs in {', '.join(mismatched)}); "
                         f"use another --out or delete it")
    return saved


def run(args: argparse.Namespace) -> Path:
    """The final: check the arguments, choose the trial, train it (resuming OUT/last.pth), then the deliverables."""
    device = pick_device(args.device)
    defaults = device_defaults(device)
    schedule = final_schedule(args, defaults["final_schedule"])
    fixed_sizes = parse_predict_sizes(args.predict_sizes)
    if not 0 <= args.ema < 1:
        raise FinalError(f"--ema must be in [0, 1), got {args.ema}")
    if args.out is not None:
        _check_writable(args.out)
    storage = None if args.preset else open_storage(args.storage, heartbeat=None, must_exist=True)
    chosen = preset_trial(args.preset) if args.preset else choose_trial(storage, args.study, args.trial)
    if chosen.plan and args.size is None:  # the schedule the study's time budget planned for this trial
        schedule = parse_schedule(chosen.plan["schedule"])
    print(f"final: study {chosen.study!r} trial {chosen.trial.number}, chosen by {chosen.decided_by}"
          + (f"; following the study's time-budget plan: {chosen.plan['schedule']} (about "
             f"{chosen.plan['minutes']:.0f} min of the {chosen.plan['minutes_left']:.0f} left at the search's end; "
             f"--size overrides it)" if chosen.plan and args.size is None else ""), flush=True)
    if device.type != "cuda" and args.size is None and not chosen.plan:
        print(f"note: no CUDA device; training {describe_schedule(schedule)} on the CPU (the CPU default, "
              f"docs/results.md; the challenge scores 512 px: use a GPU, or --size, for full fidelity)")
    arch, loss_cfg, train_cfg = replay(chosen.trial, parse_assignments(args.set, "--set"))
    train_cfg = dataclasses.replace(train_cfg, ema=args.ema)
    out = args.out or Path("studies") / chosen.study / "final"
    _check_writable(out)
    data = choose_data(args.data, chosen)
    splits = SplitCache(data, include_val=args.include_val)
    identity = {"config": arch.to_dict(), "schedule": format_schedule(schedule), "seed": args.seed,
                "data": str(data.resolve()), "include_val": args.include_val, "loss": loss_cfg.to_dict(),
                "train": train_cfg.to_dict()}
    state = check_resume(out / "last.pth", identity) if (out / "last.pth").exists() else None
    for stage in schedule:
        splits[stage.size]  # decode and validate every stage's data before training starts
    print(f"training: trial {chosen.trial.number} (proxy F {_f(chosen.trial.value)}), {count_params(arch):,} params, "
          f"{describe_schedule(schedule)} on {device} (seed {args.seed}); data {data}; output {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    workers = args.loader_workers if args.loader_workers is not None else defaults["loader_workers"]
    model, result = train(args, chosen, arch, (loss_cfg, train_cfg), splits, schedule, identity, state, out,
                          device, workers)
    deliver(args, chosen, storage, model, result, arch, (loss_cfg, train_cfg), splits, schedule, data, out, device,
            fixed_sizes)
    return out


def final_schedule(args: argparse.Namespace, default: str) -> tuple[Stage, ...]:
    """--size (and --epochs), else the device's default final schedule (checked before anything else runs)."""
    try:
        schedule = schedule_from_args(args.size, args.epochs, default)
    except ScheduleError as e:
        raise FinalError(str(e)) from None
    return schedule


def train(args: argparse.Namespace, chosen: Chosen, arch: ArchConfig, cfgs: tuple, splits: SplitCache,
          schedule: tuple[Stage, ...], identity: dict, state: dict | None, out: Path, device: torch.device,
          workers: int) -> tuple[torch.nn.Module, FitResult]:
    """`full_fit` through the schedule, each epoch checkpointed to OUT/last.pth and its history to history.csv."""
    last, epochs = out / "last.pth", total_epochs(schedule)
    if state is not None:
        print(f"resuming from {last} at epoch {state['epoch']}/{epochs}", flush=True)

    def checkpoint(epoch: int, train_state: dict) -> None:
        _save_atomic({**identity, **train_state, "trial": {"study": chosen.study, "number": chosen.trial.number}},
                     last)
        write_history(train_state["history"], out / "history.csv")

    budget = chosen.plan and chosen.plan.get("budget")  # the study's time budget, when its plan covers this trial

    def say(epoch: int, record: dict) -> None:  # a plain line per evaluated epoch, terminal or not
        raw = f" (raw weights {record['val_f_raw']:.4f})" if "val_f_raw" in record else ""
        left = "" if not budget else f" [{say_minutes(left_s(budget))} of the budget left]" if left_s(budget) > 0 \
            else " [the time budget is spent]"
        print(f"epoch {epoch}/{epochs} at {record['size']} px: loss {record['loss']:.4f}, val F "
              f"{record['val_f']:.4f}{raw}, {record['images_per_s']:.1f} img/s, {record['seconds']:.0f} s{left}",
              flush=True)

    # the initial weights are drawn from --seed too, not only data order and augmentation
    return full_fit(arch, splits, *cfgs, schedule=schedule, seed=args.seed, ema=args.ema, device=device,
                    workers=workers, state=state, callback=say, on_epoch_end=checkpoint, desc="final",
                    compile=args.compile)


def deliver(args: argparse.Namespace, chosen: Chosen, storage, model: torch.nn.Module, result: FitResult,
            arch: ArchConfig, cfgs: tuple, splits: SplitCache, schedule: tuple[Stage, ...], data: Path, out: Path,
            device: torch.device, fixed_sizes: tuple[int, ...] | None) -> None:
    """After training: the prediction setting (chosen on val unless fixed), ckpt.pth, report.md, the test masks,
    solution/, final.json, report.pdf and the checked submission.zip."""
    size = schedule[-1].size  # the model predicts at the last stage's size
    val = splits[size][1]
    # fit scored val after its last epoch; a run resumed after that epoch has no scorer yet
    scorer = result.scorer or evaluate(model, val, device)
    sizes, rows = fixed_sizes, []
    if sizes is None:
        def val_at(s: int):
            return val if s == size else load_split(data, "val", size=s, keep_full_masks=True)
        sizes, rows = choose(model, val_at, size, device, args.flip_tta, say=lambda line: print(line, flush=True))
    # the choice's first row is the training size, scored with flip TTA when the masks are written with it
    tta_f = rows[0].val_f if rows and args.flip_tta else evaluate(model, val, device, flip_tta=True).f_measure
    ckpt = out / "ckpt.pth"
    params = export_checkpoint(model, arch, size, ckpt, predict_sizes=sizes)
    write_report(out, chosen, arch, params, scorer, result, args, schedule, tta_f, sizes, rows)
    n_test = predict_test(model, data, sizes, device, out / "masks", args.flip_tta)
    write_solution(out / "solution", ckpt)
    at = next((r.val_f for r in rows if r.sizes == sizes), None)
    print(f"val F-measure {scorer.f_measure:.4f} (raw weights {_f(result.raw_f)}, flip TTA {tta_f:.4f}); predicts at "
          f"{describe_sizes(sizes)}{'' if at is None else f' (val F {at:.4f})'}; report {out / 'report.md'}")
    loss_cfg, train_cfg = cfgs
    (out / "final.json").write_text(strict_json({
        "study": chosen.study, "trial": chosen.trial.number, "params": params, "size": size,
        "epochs": total_epochs(schedule), "schedule": format_schedule(schedule), "seed": args.seed,
        "val_f": scorer.f_measure, "val_f_raw": result.raw_f, "val_f_flip_tta": tta_f,
        "predict_sizes": list(sizes), "predict_settings": [r.to_dict() for r in rows],
        "fit_seconds": result.history[-1]["seconds"] if result.history else None, "device": str(device),
        "flops": count_flops(arch, size), "arch": arch.to_dict(), "loss": loss_cfg.to_dict(),
        "train": train_cfg.to_dict(), "ema": args.ema, "flip_tta": args.flip_tta, "include_val": args.include_val,
        "train_images": len(splits[size][0]), "val_images": len(scorer.scores), "miou": scorer.miou(),
        "per_class": scorer.per_class_rows(), "found_by": found_by(chosen, storage)}))
    try:
        write_pdf(out)
    except ReportError as e:
        print(f"note: {e}; rebuild it later with python -m train.report_pdf {out}", flush=True)
    ship_zip(out, data, n_test)


def ship_zip(out: Path, data: Path, n_test: int) -> None:
    """submission.zip (masks and solution), checked as the final phase's server would, when the test set exists."""
    if not n_test:
        print(f"no test images under {data / 'test' / 'images'}: no submission.zip written")
        return
    path = write_zip(out)
    from train.submission import check_zip

    problems = check_zip(path, data / "test" / "images", phase="final")
    if problems:
        raise FinalError(f"{path} failed the submission check: {problems[0]}")
    print(f"{n_test} test masks in {out / 'masks'}; submission {path} (checked)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (FinalError, SpaceError, DataError, StorageError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last finished epoch is saved; re-run the same command to resume",
              file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
