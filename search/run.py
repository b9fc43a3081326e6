"""`python -m search.run --trials 100`: the architecture search.

Each trial samples an architecture and a training recipe (`space.sample.sample_config`), trains a short proxy
run, reports the validation F-measure each epoch so that weak trials are pruned, and leaves behind user attrs
and a prediction grid (an Optuna artifact) for optuna-dashboard. Re-running the same command resumes the study.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from search.rung import (
    FAILURES,
    MINUTES_ATTR,
    PENDING_ATTR,
    SETTING_ATTR,
    RungSetting,
    name_of,
    proxy_text,
    redirect_notes,
    run_rung,
    rung_records,
    verdict,
)
from search.storage import (
    DEFAULT_STORAGE,
    HEARTBEAT_S,
    StorageError,
    is_sqlite,
    open_storage,
    pick_trial,
    require_study,
)
from search.workers import fail_dead_trials, take_trial, this_worker
from space.budget import count_flops
from space.config import BUDGET
from space.portfolio import PORTFOLIO, Entry, load_portfolio
from space.presets import PRESETS
from space.sample import ADDED_PARAMS, InCapSampler, check_params, parse_assignments, recipe_params, sample_config
from train.accel import share_memory
from train.data import DataError, Split, SplitCache, load_split, resolve_data
from train.infer import device_defaults, pick_device, predict_logits
from train.loop import fit_new, proxy_signals
from train.schedule import MAX_EPOCHS, MAX_SIZE, MIN_SIZE, ScheduleError, Stage, parse_schedule
from train.visual import prediction_grid

METRIC_NAME = "val_f_measure"
OVER_LIMIT_DEFAULT = "reference"  # search.rung's rule for picks foretold over --final-minutes (RungSetting.over_limit):
# on both CPU flow studies it shipped the same pick as "own" in 12 and 24 fewer rung minutes (docs/results.md)


@dataclass
class Settings:
    data: Path
    study: str
    storage: str
    artifact_dir: Path
    proxy_size: int
    proxy_epochs: int
    subset: float
    sampler: str
    pruner: str
    seed: int
    device: str
    loader_workers: int
    heartbeat: float = HEARTBEAT_S
    signal: str = "last_f"  # what a complete trial reports: train.loop.proxy_signals' last_f or mean_last2_f
    flops_cap: float = 0.0  # prune trials costing more than this multiple of the costliest preset's FLOPs
    fixed: dict = field(default_factory=dict)  # params held fixed (--fix, --recipe-from); the rest is searched
    rung_k: int = 0  # trials promoted to the second rung (search.rung); 0 = none
    rung_schedule: str = "128:4"
    rung_subset: float = 0.4
    portfolio: tuple[Entry, ...] = PORTFOLIO  # known-good entries every new study starts from (space.portfolio)
    final_schedule: str = "128:24,256:12"  # train.final's default here: the rung predicts its minutes
    final_minutes: float | None = None  # picks predicted slower than this are left out (search.rung)
    final_minutes_given: bool = True  # False: the device's default, and a study that recorded a limit keeps its own
    over_limit: str = OVER_LIMIT_DEFAULT  # --over-limit-recipe: the recipe a pick foretold over the limit trains at
    over_limit_given: bool = True  # False: the default, and a study whose last rung recorded one keeps its own

    def rung(self) -> RungSetting:
        return RungSetting(self.rung_k, self.rung_schedule, self.rung_subset, self.signal, self.seed, self.over_limit)


def preset_flops(size: int) -> int:
    """FLOPs of the most expensive hand-designed preset at `size`: the unit of the search's FLOPs cap."""
    return max(count_flops(sample_config(optuna.trial.FixedTrial(p))[0], size) for p in PRESETS.values())


class Objective:
    """Holds the cached proxy data; one call trains one trial."""

    def __init__(self, s: Settings, train: Split, val: Split):
        self.s, self.train, self.val = s, train, val
        self.device = pick_device(s.device)
        s.artifact_dir.mkdir(parents=True, exist_ok=True)
        self.store = FileSystemArtifactStore(str(s.artifact_dir))
        self.max_flops = s.flops_cap * preset_flops(s.proxy_size) if s.flops_cap else None

    def __call__(self, trial: optuna.Trial) -> float:
        s = self.s
        for key, value in this_worker().items():  # first: a later start can tell whether this worker died
            trial.set_user_attr(key, value)
        arch, loss_cfg, train_cfg = sample_config(trial)
        flops = count_flops(arch, s.proxy_size)
        trial.set_user_attr("flops", flops)
        trial.set_user_attr("device", str(self.device))
        trial.set_user_attr("arch", arch.to_dict())
        trial.set_user_attr("draws_over_cap", getattr(trial.study.sampler, "last_redrawn", 0))
        known_good = "portfolio" in trial.user_attrs  # never pruned: not judged at the lowest fidelity alone
        if self.max_flops and flops > self.max_flops and not known_good:  # only an enqueued trial can be
            trial.set_user_attr("over_flops_cap", True)
            raise optuna.TrialPruned(f"{flops / 1e6:.0f} MFLOPs > cap {self.max_flops / 1e6:.0f} (--flops-cap)")

        def report(epoch: int, record: dict) -> None:
            trial.report(record["val_f"], epoch)
            if not known_good and trial.should_prune():
                trial.set_user_attr("epochs_run", epoch)
                raise optuna.TrialPruned(f"pruned at epoch {epoch} with F {record['val_f']:.4f}")

        try:
            # initial weights from the seed and the trial number alone: a resumed or parallel trial is replayable
            model, result = fit_new(arch, {s.proxy_size: (self.train, self.val)}, loss_cfg, train_cfg,
                                    seed=s.seed + trial.number, schedule=(Stage(s.proxy_size, s.proxy_epochs),),
                                    device=self.device,
                                    workers=s.loader_workers, callback=report, desc=f"trial {trial.number}")
        except FAILURES as e:
            trial.set_user_attr("fail_reason", f"{type(e).__name__}: {e}"[:500])
            raise
        trial.set_user_attr("epochs_run", result.epochs_run)
        trial.set_user_attr("seconds", round(result.seconds, 2))
        trial.set_user_attr("train_images_per_s", round(result.train_images_per_s, 2))
        trial.set_user_attr("per_class_f", [None if math.isnan(v) else round(v, 4) for v in result.per_class_f])
        self._upload_grid(trial, model)
        return proxy_signals(result.history)[s.signal]

    def _upload_grid(self, trial: optuna.Trial, model: torch.nn.Module, n: int = 4) -> None:
        images = self.val.images[:n]
        preds = list(predict_logits(model, images, self.device).argmax(1).to(torch.uint8).cpu().numpy())
        with tempfile.TemporaryDirectory() as tmp:
            path = prediction_grid(list(images), list(self.val.masks[:n]), preds,
                                   Path(tmp) / f"trial{trial.number}_predictions.png")
            upload_artifact(artifact_store=self.store, file_path=str(path), study_or_trial=trial,
                            mimetype="image/png")


def make_sampler(name: str, seed: int, fixed: dict | None = None) -> optuna.samplers.BaseSampler:
    """TPE or random; with `fixed` params, Optuna's PartialFixedSampler around it (the fixed values are still
    stored as the trial's params, so `train.final` replays them exactly). `study_sampler` draws each trial's
    proposal from one of these."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if name == "random":
            sampler = optuna.samplers.RandomSampler(seed=seed)
        else:
            sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                                 n_startup_trials=10)
        return optuna.samplers.PartialFixedSampler(fixed, sampler) if fixed else sampler


def make_pruner(name: str, max_epochs: int) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)


def study_sampler(s: Settings) -> InCapSampler:
    """Each trial's proposal, drawn by `make_sampler` seeded from --seed and the trial's number (workers never share
    a stream; a resumed study never replays a proposal) and redrawn while over the FLOPs cap (space.sample)."""
    cap = s.flops_cap * preset_flops(s.proxy_size) if s.flops_cap else None
    return InCapSampler(lambda seed: make_sampler(s.sampler, seed, s.fixed), s.seed, cap, s.proxy_size)


def open_study(s: Settings, storage: optuna.storages.BaseStorage | None = None) -> optuna.Study:
    """The study (created if new), with this process's sampler (`study_sampler`) and pruner."""
    storage = storage or open_storage(s.storage, heartbeat=s.heartbeat)
    study = optuna.create_study(study_name=s.study, storage=storage, direction="maximize", sampler=study_sampler(s),
                                pruner=make_pruner(s.pruner, s.proxy_epochs), load_if_exists=True)
    if not study.metric_names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([METRIC_NAME])
    return study


def enter_portfolio(study: optuna.Study, storage: optuna.storages.BaseStorage, s: Settings, given: bool
                    ) -> list[int]:
    """The portfolio enters a study when it starts (`enqueue_portfolio`), never on a resume: a study keeps the
    entries it began with (a note says so when `--portfolio` was given again)."""
    if not study.trials:
        return enqueue_portfolio(study, storage, s.portfolio, s.fixed)
    if given:
        print(f"note: --portfolio ignored: the portfolio enters a study when it starts, and {s.study!r} has "
              f"{len(study.trials)} trials", flush=True)
    return []


def enqueue_portfolio(study: optuna.Study, storage: optuna.storages.BaseStorage, portfolio: tuple[Entry, ...],
                      fixed: dict | None = None) -> list[int]:
    """Enqueue each portfolio entry once (user attr `portfolio`, and `preset` for a preset's network), before any
    proposal; returns the numbers of duplicates dropped. `fixed` params (`--fix`, `--recipe-from`) replace the
    entries' own, so that entries and searched nets are compared at one recipe.

    Optuna's `skip_if_exists` is not atomic (its docs say so): several `search.run` processes started together on
    one study can each enqueue the portfolio. Each process therefore drops, after enqueueing, every WAITING entry
    trial that repeats an earlier one: it claims the trial with the same atomic WAITING -> RUNNING step that
    `Study.ask` uses (so no worker trains it) and fails it with user attr `duplicate_of`. FAIL, not PRUNED: TPE
    ignores failed trials but would count a pruned one as a bad result for the entry's parameters. Retries of
    killed trials (system attr `failed_trial`) keep their entry name and are left alone.
    """
    for entry in portfolio:
        attrs = {"portfolio": entry.name, **({"preset": entry.preset} if entry.preset else {})}
        study.enqueue_trial({**entry.params, **(fixed or {})}, user_attrs=attrs, skip_if_exists=True)
    first: dict[str, int] = {}
    dropped = []
    for t in study.get_trials(deepcopy=False):
        name = t.user_attrs.get("portfolio")
        if name is None or "failed_trial" in t.system_attrs:
            continue
        if name not in first:
            first[name] = t.number
        elif t.state == optuna.trial.TrialState.WAITING and claim(storage, t):
            storage.set_trial_user_attr(t._trial_id, "duplicate_of", first[name])
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            dropped.append(t.number)
    return dropped


def claim(storage: optuna.storages.BaseStorage, t: optuna.trial.FrozenTrial) -> bool:
    """Atomically WAITING -> RUNNING; False if another process claimed or finished the trial first."""
    try:
        return storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.RUNNING)
    except optuna.exceptions.UpdateFinishedTrialError:  # another process dropped it a moment ago
        return False


def load_data(s: Settings) -> tuple[Split, Split]:
    train = load_split(s.data, "train", size=s.proxy_size).head(s.subset)
    val = load_split(s.data, "val", size=s.proxy_size, keep_full_masks=True)
    return train, val


def run_worker(s: Settings, budget, timeout: float | None, threads: int, data: tuple[Split, Split] | None = None,
               workers_on_device: int = 1) -> None:
    """One process's share of the search (also the single-process path, which passes the data it loaded): it
    runs trials while the invocation's `budget` (a shared multiprocessing Value) has any left."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(s.device)
    share_memory(device, workers_on_device)  # several workers on one GPU: each gets its share of its memory
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val = data or load_data(s)
    study = open_study(s)
    objective, t0 = Objective(s, train, val), time.time()
    while (timeout is None or time.time() - t0 < timeout) and take_trial(budget):
        study.optimize(objective, n_trials=1, callbacks=[say_trial], catch=FAILURES, gc_after_trial=True)


def say_trial(study: optuna.Study, t: optuna.trial.FrozenTrial) -> None:
    """One plain line per finished trial, terminal or not (nohup, CI and cluster logs see progress too)."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best = max((d.value for d in done), default=float("nan"))
    a = t.user_attrs
    f = t.value if t.value is not None else (t.intermediate_values[max(t.intermediate_values)]
                                             if t.intermediate_values else float("nan"))
    how = {"PRUNED": (" before training (FLOPs cap)" if a.get("over_flops_cap") else
                      f" at epoch {a.get('epochs_run', max(t.intermediate_values, default=0))}"),
           "FAIL": f" ({a.get('fail_reason', 'failed')})"}.get(t.state.name, "")
    seconds = t.duration.total_seconds() if t.duration else float("nan")
    print(f"trial {t.number} {t.state.name.lower()}{how}: F={f:.4f} best={best:.4f} "
          f"params={a.get('params', 0):,} {seconds:.0f} s", flush=True)


def n_finished(study: optuna.Study) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=done))


def describe(t: optuna.trial.FrozenTrial) -> str:
    p = t.params
    stages = "-".join(f"{p.get(f's{i}_block')}{p.get(f's{i}_depth')}" for i in range(p.get("n_stages", 0)))
    return (f"#{t.number:<4} F={t.value:.4f} params={t.user_attrs.get('params', 0):>9,} "
            f"stages={stages} os={p.get('output_stride')} ctx={p.get('context')} "
            f"skips={''.join(k for k in '842' if p.get(f'skip{k}')) or '-'} detail={p.get('detail_width')}")


def summary(study: optuna.Study, s: Settings) -> str:
    states = [t.state for t in study.trials]
    counts = {st.name.lower(): states.count(st) for st in optuna.trial.TrialState if states.count(st)}
    done = sorted((t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
                  key=lambda t: t.value, reverse=True)
    lines = [f"study {s.study!r}: " + ", ".join(f"{v} {k}" for k, v in counts.items())]
    rung = rung_records(study)
    if done:
        lines.append("top trials:")
        lines += ["  " + describe(t) + (f" rung2_F={rung[t.number]['f']:.4f}" if t.number in rung else "")
                  for t in done[:5]]
    if rung:
        lines.append(f"second rung ({len(rung)} trials), train.final predicted at {s.final_schedule}"
                     + (f", picks over {s.final_minutes:g} min left out" if s.final_minutes else "") + ":")
        lines += [f"  {name_of(study.trials[n])}: proxy F {proxy_text(r['proxy_f'])} -> rung-2 F {r['f']:.4f}, "
                  + (f"{r['final_minutes']:.0f} min" if r.get("final_minutes") else "time not recorded")
                  + (" (the reference)" if r.get("reference") else "")
                  for n, r in sorted(rung.items(), key=lambda item: -item[1]["f"])]
        lines += ["  " + note for note in redirect_notes(study)]
        lines.append(f"{verdict(study)}; train.final --study best takes it")
    over = [t.user_attrs.get("draws_over_cap", 0) for t in study.trials
            if "draws_over_cap" in t.user_attrs and "portfolio" not in t.user_attrs]  # proposals, not entries
    if over and s.flops_cap:
        lines.append(f"FLOPs cap: {sum(over)} of {sum(over) + len(over)} draws were over it and drawn again "
                     f"({sum(over) / (sum(over) + len(over)):.0%}); no trial was created for them")
    lines += ["", f"browse:  optuna-dashboard {s.storage} --artifact-dir {s.artifact_dir}",
              "retrain: python -m train.final --study best"
              + ("" if s.storage == DEFAULT_STORAGE else f" --storage {s.storage}")]
    return "\n".join(lines)


def save_dashboard_note(study: optuna.Study, s: Settings, text: str) -> None:
    """A markdown note on the study's dashboard page: data, proxy settings, best trials, commands."""
    import optuna_dashboard

    note = (f"# facenas study `{s.study}`\n\n- data: `{s.data}`\n- proxy: {s.proxy_size} px, {s.proxy_epochs} epochs, "
            f"{s.subset:.0%} of train, scored by {s.signal}, device {s.device}; sampler {s.sampler}, "
            f"pruner {s.pruner}\n"
            f"- budget: fewer than {BUDGET:,} parameters\n\n```\n{text}\n```\n\n"
            f"Each complete trial has a prediction grid artifact (input, ground truth, prediction).\n")
    optuna_dashboard.save_note(study, note)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.run", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                epilog="A trial whose loss becomes NaN/inf or that runs out of memory is marked FAIL "
                                       "with the reason and the search goes on; any other exception is a bug and "
                                       "ends the run with its traceback (finished trials stay in the study).")
    p.add_argument("--trials", type=int, default=100,
                   help="new trials to run in this invocation; 0 = none: only the second rung, on the study's "
                        "trials (e.g. to judge them again at another --rung-size or --over-limit-recipe)")
    p.add_argument("--data", type=Path, default=None,
                   help="dataset root (challenge layout); default data/celebamask-mini if present, else the "
                        "embedded synthetic face set, generated once into data/synthetic/")
    p.add_argument("--study", default=None, help="study name; default facenas-<data folder name>")
    p.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage: an RDB URL (sqlite:///..., postgresql+psycopg://...) or a plain path "
                        "to a JournalFileBackend file")
    p.add_argument("--proxy-size", type=int, default=None, help="proxy training resolution in px "
                   "(default 64 on CPU, 256 on CUDA)")
    p.add_argument("--proxy-epochs", type=int, default=None, help="epochs per proxy run (default 4 CPU, 12 CUDA)")
    p.add_argument("--subset", type=float, default=None,
                   help="fraction of the training split used by proxies (default 0.4 CPU, 1.0 CUDA)")
    p.add_argument("--signal", choices=("last_f", "mean_last2_f"), default=None,
                   help="what a complete proxy trial reports: the last val F, or the mean of the last two "
                        "evaluations (default mean_last2_f on CPU, where it ranked best per CPU-minute against full "
                        "training, docs/results.md; last_f on CUDA, not yet measured there)")
    p.add_argument("--sampler", choices=("tpe", "random"), default="tpe", help="Optuna sampler")
    p.add_argument("--pruner", choices=("hyperband", "median", "none"), default="hyperband",
                   help="Optuna pruner, stepped per proxy epoch")
    p.add_argument("--workers", type=int, default=1,
                   help="parallel processes sharing the study (needs a journal file or PostgreSQL, not SQLite)")
    p.add_argument("--artifact-dir", type=Path, default=None,
                   help="where prediction grids are stored (default studies/artifacts)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampler and of proxy training")
    p.add_argument("--timeout", type=float, default=None, help="stop starting new trials after this many seconds")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--flops-cap", type=float, default=None,
                   help="prune, before training, any trial whose forward pass costs more FLOPs than this multiple "
                        "of the most expensive preset (0 = no cap; default 1.0 on CPU, where slow nets cannot be "
                        "retrained in time, 0 on CUDA)")
    p.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="hold one parameter of the space at a value (repeatable; the names are the study's "
                        "parameter names, checked against the space), e.g. --fix batch_size=8; the portfolio's "
                        "entries take the fixed values too. `train.final` replays them exactly")
    p.add_argument("--portfolio", type=Path, default=None, metavar="FILE",
                   help="start a new study from these known-good configurations instead of the built-in portfolio "
                        "(space/portfolio.py: dw_unet, arch-tpe #28 and the other presets at recipe R85): a JSON "
                        "list of {\"name\": ..., \"params\": {trial params}}, each checked against the space. "
                        "Entries are trained first, never pruned, and the best of them by proxy F is trained at the "
                        "second rung beside the top K (the reference)")
    p.add_argument("--recipe-from", default=None, metavar="STUDY[:TRIAL]",
                   help="hold the loss and optimiser params (the recipe) at those of a trial of another study "
                        "in the same storage (default its best trial), so that only architectures are searched; "
                        "--fix values win over it")
    p.add_argument("--rung", type=int, default=None, metavar="K",
                   help="after the proxy trials, train the top K complete trials again at --rung-size on "
                        "--rung-subset of train (the second rung), with the portfolio entry of the best proxy F (the "
                        "reference) and then, when its recipe differs, the best searched network at the reference's "
                        "recipe (the recipe stage); train.final --study best takes the best of them (among those "
                        "within --final-minutes); 0 = off "
                        "(default 3 on CPU, 0 on CUDA)")
    p.add_argument("--rung-size", default=None, metavar="SIZE:EPOCHS[,...]",
                   help="the second rung's resolution schedule (default 128:4,256:2 on CPU: of the rungs measured it "
                        "ordered the networks of known full F best, docs/results.md)")
    p.add_argument("--rung-subset", type=float, default=None,
                   help="share of the training split the second rung trains on (default 1.0 on CPU)")
    p.add_argument("--final-minutes", type=float, default=None, metavar="M",
                   help="leave out of the rung's choice any trial whose train.final, at the device's default "
                        "schedule, is predicted to take over M minutes (each rung run records its seconds per epoch "
                        "and per scoring at each size; the summary prints every promoted trial's prediction). "
                        "Default 40 on the CPU, meant to keep the whole flow (this search, then train.final) within "
                        "2 hours on two cores; off on CUDA; inf turns it off; a resumed study keeps the limit it "
                        "recorded unless this flag is given")
    p.add_argument("--over-limit-recipe", choices=("own", "reference"), default=None,
                   help="what the second rung trains for a searched pick whose train.final is foretold over "
                        "--final-minutes from its proxy speed (the reference's predicted minutes x the reference's "
                        "proxy images/s / the pick's): own = the pick as searched, which the limit then leaves "
                        "out; reference = the pick's network at the reference's recipe (a recipe stage trial), "
                        "which can ship. The reference's rung run is trained first. On the two CPU flow studies "
                        "'reference' shipped the same picks as 'own' with 12 and 24 fewer rung minutes "
                        "(docs/results.md); a rung with another value is a new rung setting. Default "
                        f"{OVER_LIMIT_DEFAULT}; a resumed study keeps the value of its last rung unless this flag "
                        "is given")
    p.add_argument("--heartbeat", type=float, default=HEARTBEAT_S,
                   help="seconds between heartbeats of a running trial on an RDB storage; a trial silent for 3 "
                        "beats (its worker was killed) is marked FAIL and retried once")
    return p.parse_args(argv)


def fixed_params(args: argparse.Namespace, storage: optuna.storages.BaseStorage) -> dict:
    """--recipe-from's recipe, then the --fix values over it; every name and value checked against the space."""
    fixed = {}
    if args.recipe_from:
        name, _, number = args.recipe_from.partition(":")
        if number and not number.isdigit():
            raise ValueError(f"--recipe-from {args.recipe_from}: expected STUDY or STUDY:TRIAL (a trial number)")
        require_study(storage, name)
        source = optuna.load_study(study_name=name, storage=storage)
        trial = pick_trial(source, int(number) if number else None)
        fixed = recipe_params(trial.params)
    fixed.update(parse_assignments(args.fix, "--fix"))
    return check_params(fixed, "--fix")


def check_resumable(study: optuna.Study, s: Settings) -> None:
    """A study's F values are comparable only under one proxy and one set of fixed params: refuse to mix."""
    recorded = study.user_attrs.get("proxy")
    if recorded is None and not any(t.state.is_finished() for t in study.trials):
        return  # a new study: nothing trained yet (another process started together may still be writing settings)
    # studies from before --signal reported the last F
    proxy = {"signal": "last_f", **(recorded or {})}
    # the seed too: the proxies and rung runs were seeded from it (seed + trial number), and analysis replays them
    now = {"size": s.proxy_size, "epochs": s.proxy_epochs, "subset": s.subset, "signal": s.signal, "seed": s.seed}
    changed = [f"{k} {proxy[k]} -> {v}" for k, v in now.items() if k in proxy and proxy[k] != v]
    fixed = study.user_attrs.get("fixed", {})
    if fixed:  # a study from before a parameter existed held it at its old value (--recipe-from now names it too)
        fixed = {**{k: v for k, v in ADDED_PARAMS.items() if s.fixed.get(k, object()) == v}, **fixed}
    if fixed != s.fixed:
        changed.append(f"fixed params {study.user_attrs.get('fixed', {})} -> {s.fixed}")
    if changed:
        raise ValueError(f"study {s.study!r} was searched with other settings ({'; '.join(changed)}); its F values "
                         f"would not be comparable: use the same flags, or a new --study")


def settings_from_args(args: argparse.Namespace) -> Settings:
    device = pick_device(args.device)
    d = device_defaults(device)
    data = resolve_data(args.data)
    return Settings(
        data=data, study=args.study or f"facenas-{data.resolve().name}", storage=args.storage,
        artifact_dir=args.artifact_dir or Path("studies/artifacts"),
        proxy_size=args.proxy_size or d["proxy_size"], proxy_epochs=args.proxy_epochs or d["proxy_epochs"],
        subset=args.subset or d["subset"], signal=args.signal or d["signal"], sampler=args.sampler,
        pruner=args.pruner, seed=args.seed,
        device=str(device), loader_workers=d["loader_workers"], heartbeat=args.heartbeat,
        flops_cap=d["flops_cap"] if args.flops_cap is None else args.flops_cap,
        rung_k=d["rung_k"] if args.rung is None else args.rung, rung_schedule=args.rung_size or d["rung_schedule"],
        rung_subset=args.rung_subset or d["rung_subset"],
        portfolio=load_portfolio(args.portfolio) if args.portfolio else PORTFOLIO,
        final_schedule=d["final_schedule"],
        final_minutes=final_minutes_limit(d["final_minutes"] if args.final_minutes is None else args.final_minutes),
        final_minutes_given=args.final_minutes is not None, over_limit=args.over_limit_recipe or OVER_LIMIT_DEFAULT,
        over_limit_given=args.over_limit_recipe is not None)


def final_minutes_limit(minutes: float | None) -> float | None:
    """`--final-minutes` as the study stores it: None when off (`inf`)."""
    return None if minutes is None or math.isinf(minutes) else minutes


def validate(args: argparse.Namespace) -> None:
    if args.trials < 0:
        raise ValueError(f"--trials must be >= 0 (0 = only the second rung), got {args.trials}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > 1 and is_sqlite(args.storage):
        raise ValueError("SQLite is unsafe for parallel writers: with --workers > 1 use a journal file "
                         "(--storage studies/facenas.journal) or PostgreSQL (--storage postgresql+psycopg://...)")
    if args.subset is not None and not 0 < args.subset <= 1:
        raise ValueError(f"--subset must be in (0, 1], got {args.subset}")
    for name, (low, high) in (("proxy_size", (MIN_SIZE, MAX_SIZE)), ("proxy_epochs", (1, MAX_EPOCHS))):
        value = getattr(args, name)
        if value is not None and not low <= value <= high:
            raise ValueError(f"--{name.replace('_', '-')} must be {low}..{high}, got {value}")
    if args.flops_cap is not None and args.flops_cap < 0:
        raise ValueError(f"--flops-cap must be >= 0 (0 = no cap), got {args.flops_cap}")
    if args.heartbeat <= 0:
        raise ValueError(f"--heartbeat must be > 0 seconds, got {args.heartbeat}")
    if args.timeout is not None and args.timeout <= 0:
        raise ValueError(f"--timeout must be > 0, got {args.timeout}")
    if args.rung is not None and args.rung < 0:
        raise ValueError(f"--rung must be >= 0 (0 = off), got {args.rung}")
    if args.rung_subset is not None and not 0 < args.rung_subset <= 1:
        raise ValueError(f"--rung-subset must be in (0, 1], got {args.rung_subset}")
    if args.final_minutes is not None and not args.final_minutes > 0:
        raise ValueError(f"--final-minutes must be > 0 minutes, got {args.final_minutes}")
    if args.rung_size is not None:
        try:
            parse_schedule(args.rung_size)
        except ScheduleError as e:
            raise ValueError(f"--rung-size {args.rung_size}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        validate(args)
        s = settings_from_args(args)
        if not args.trials and not s.rung_k:
            raise ValueError("--trials 0 runs only the second rung, and the rung is off here (--rung 0, or the "
                             "device's default: 0 on CUDA): give --rung K")
        data = load_data(s)  # validates every file: fail fast on a bad folder, before anything is written
        storage = open_storage(s.storage, heartbeat=s.heartbeat, must_exist=not args.trials)
        s.fixed = fixed_params(args, storage)
        if not args.trials:  # only the rung: on a study that has trials, nothing created
            require_study(storage, s.study)
            if not optuna.load_study(study_name=s.study, storage=storage).get_trials(
                    deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
                raise ValueError(f"--trials 0 runs only the second rung, on the study's trials, and study "
                                 f"{s.study!r} has no complete trial yet")
        study = open_study(s, storage)
        check_resumable(study, s)
    except (ValueError, DataError, StorageError, OSError) as e:  # SpaceError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    finished = n_finished(study)
    if not isinstance(storage, optuna.storages.RDBStorage):  # an RDB has heartbeats; a journal file has none
        for note in fail_dead_trials(study):
            print(f"note: {note}", flush=True)
    record_settings(study, s)  # before the portfolio: a process started together that sees trials sees them
    dropped = enter_portfolio(study, storage, s, given=args.portfolio is not None)
    print(f"search: study {s.study!r} in {s.storage} ({finished} trials so far); data {s.data}; "
          f"proxy {s.proxy_size} px x {s.proxy_epochs} epochs on {s.subset:.0%} of train, scored by {s.signal}; "
          f"device {s.device}; "
          f"FLOPs cap {f'{s.flops_cap:g}x the costliest preset' if s.flops_cap else 'none'}; "
          f"budget < {BUDGET:,} params"
          + (f"; fixed: {', '.join(f'{k}={v}' for k, v in s.fixed.items())}" if s.fixed else ""), flush=True)
    if dropped:
        print(f"search: another process enqueued the portfolio at the same moment; dropped the duplicate trials "
              f"{', '.join(f'#{n}' for n in dropped)} (failed untrained, user attr duplicate_of)", flush=True)
    rung = pending_rung(study, s)
    if rung is not None:  # the rule: an unfinished rung is finished first, alone
        proxy_s = 0.0
    else:
        rung, t0 = s.rung(), time.time()
        failed, ran = run_proxy_phase(s, args, data) if args.trials else (None, 0)
        if failed is not None:
            return failed
        proxy_s = time.time() - t0
        print(f"\n{ran} trials in {proxy_s:.0f} s (this command's; other processes on the study count their own)")
        if rung.k:
            study.set_user_attr(PENDING_ATTR, dataclasses.asdict(rung))  # the proxy phase is over: the rung is due
    if rung.k:
        print(f"rung 2: the top {rung.k} complete trials at {rung.describe()}", flush=True)
        try:
            rung_s = run_rung(open_study(s), rung, SplitCache(s.data, subset=rung.subset), pick_device(s.device),
                              s.final_schedule)
        except KeyboardInterrupt:
            print("\ninterrupted during the second rung: finished rung runs are saved; the same command finishes "
                  "the rung (and adds no proxy trials)", file=sys.stderr)
            return 130
    study = open_study(s)
    text = summary(study, s) + (f"\nrung 2: {rung_s:.0f} s of training" + (
        f" ({rung_s / proxy_s:.0%} of this run's proxy phase)" if proxy_s > 1 else "") if rung.k else "")
    save_dashboard_note(study, s, text)
    print(text)
    return 0


def pending_rung(study: optuna.Study, s: Settings) -> RungSetting | None:
    """The unfinished second rung this command finishes before anything else (None: there is none, or `--rung 0`
    leaves it: the study goes on without it)."""
    pending = study.user_attrs.get(PENDING_ATTR)
    if not pending:
        return None
    rung = RungSetting(**pending)
    if not s.rung_k:
        study.set_user_attr(PENDING_ATTR, None)
        print(f"search: the unfinished second rung ({rung.describe()}) is left (--rung 0); train.final chooses by "
              f"the last finished rung, else the proxy", flush=True)
        return None
    print(f"search: the last run's second rung did not finish ({rung.describe()}): finishing it now, without "
          f"proxy trials; run the command again to add trials", flush=True)
    return rung


def record_settings(study: optuna.Study, s: Settings) -> None:
    """What the study was searched under, as study user attrs (train.final and analysis read them). A study that
    recorded a `final_minutes` keeps it unless `--final-minutes` was given (`s.final_minutes_given`): a new default
    does not change an earlier study's pick; a given value that changes it is said. Likewise a study whose last rung
    finished keeps that rung's `over_limit` unless `--over-limit-recipe` was given, so its next rung keeps the id."""
    if MINUTES_ATTR in study.user_attrs and not s.final_minutes_given:
        s.final_minutes = study.user_attrs[MINUTES_ATTR]
    elif study.user_attrs.get(MINUTES_ATTR, s.final_minutes) != s.final_minutes:
        said = lambda m: "inf" if m is None else f"{m:g}"
        print(f"note: --final-minutes {said(s.final_minutes)} replaces the study's "
              f"{said(study.user_attrs[MINUTES_ATTR])}: train.final --study best chooses under the new limit",
              flush=True)
    study.set_user_attr("data", str(s.data.resolve()))  # train.final and analysis.fidelity default to it
    study.set_user_attr("proxy", {"size": s.proxy_size, "epochs": s.proxy_epochs, "subset": s.subset,
                                  "signal": s.signal, "device": s.device, "flops_cap": s.flops_cap, "seed": s.seed,
                                  "sampler": s.sampler, "pruner": s.pruner})
    study.set_user_attr("fixed", s.fixed)
    study.set_user_attr(MINUTES_ATTR, s.final_minutes)
    last = study.user_attrs.get(SETTING_ATTR)
    if last and not s.over_limit_given:  # its next rung keeps the rule (and the id) its last one had
        s.over_limit = RungSetting(**last).over_limit


def run_proxy_phase(s: Settings, args: argparse.Namespace, data: tuple[Split, Split]) -> tuple[int | None, int]:
    """The proxy trials, in this process or `--workers` processes: (an exit status when they could not finish,
    else None; the number of trials this command ran). SIGTERM (timeout, a batch scheduler) ends the workers too:
    their unfinished trials are failed and retried at the next start."""
    ctx = mp.get_context("spawn")
    budget = ctx.Value("i", args.trials)  # exactly --trials trials, whatever the number of workers
    ran = lambda: args.trials - budget.value
    procs: list = []

    def terminate(signum, frame):
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.join(10)
        print(f"\nterminated (signal {signum}): the workers are stopped; finished trials are saved, re-run the same "
              f"command to continue", file=sys.stderr, flush=True)
        sys.exit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        if args.workers == 1:
            run_worker(s, budget, args.timeout, 0, data)
            return None, ran()
        del data  # each worker process loads its own copy
        threads = max(1, (os.cpu_count() or 1) // args.workers)
        procs += [ctx.Process(target=run_worker, args=(s, budget, args.timeout, threads, None, args.workers))
                  for _ in range(args.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved; re-run the same command to continue", file=sys.stderr)
        return 130, ran()
    finally:
        signal.signal(signal.SIGTERM, previous)
    crashed = [proc.exitcode for proc in procs if proc.exitcode]
    if crashed:
        print(f"error: {len(crashed)} of {args.workers} workers ended with an exception (traceback above); "
              f"finished trials are saved", file=sys.stderr)
        return 1, ran()
    return None, ran()


if __name__ == "__main__":
    sys.exit(main())
