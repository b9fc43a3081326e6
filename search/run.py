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
from pathlib import Path

import optuna
import torch
from optuna.artifacts import FileSystemArtifactStore, upload_artifact

from search.cli import DEFAULT_TRIALS, UNLIMITED_TRIALS, parse_args, validate
from search.plan import BUDGET_ATTR, left_s, parse_duration, say_minutes
from search.rung import FAILURES, MINUTES_ATTR, PENDING_ATTR, RungSetting, run_rung
from search.settings import (
    Settings,
    check_resumable,
    fixed_params,
    record_settings,
    recorded_attrs,
    settings_from_args,
    study_name,
)
from search.storage import StorageError, open_storage, require_study, storage_exists
from search.summary import save_dashboard_note, summary
from search.timebudget import close_plan, gate, may_take_another, new_budget, proxy_end_note, rung_limit
from search.timebudget import describe as describe_budget
from search.workers import fail_dead_trials, retry_once, take_trial, this_worker
from space.budget import count_flops
from space.config import BUDGET
from space.portfolio import PORTFOLIO, Entry, load_portfolio
from space.presets import PRESETS
from space.sample import ADDED_PARAMS, InCapSampler, SpaceError, sample_config
from train.accel import share_memory
from train.data import DataError, Split, SplitCache, load_split
from train.infer import device_defaults, pick_device, predict_logits
from train.loop import fit_new, proxy_signals
from train.schedule import Stage
from train.visual import prediction_grid

METRIC_NAME = "val_f_measure"


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
        self.trial: optuna.Trial | None = None  # the trial being trained (failed and retried on SIGTERM)

    def __call__(self, trial: optuna.Trial) -> float:
        s, self.trial = self.s, trial
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
        except Terminated as e:
            trial.set_user_attr("fail_reason", f"terminated (signal {e.signum}) while training; enqueued again")
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
        # a parameter added to the space after the entry was written takes the value it always had, never a draw
        study.enqueue_trial({**ADDED_PARAMS, **entry.params, **(fixed or {})}, user_attrs=attrs, skip_if_exists=True)
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


class Terminated(KeyboardInterrupt):
    """SIGTERM while a trial trains in this process: raised as a KeyboardInterrupt so that Optuna fails the trial (a
    SystemExit would leave it RUNNING until a heartbeat or a later start noticed)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def run_worker(s: Settings, budget, timeout: float | None, threads: int, data: tuple[Split, Split] | None = None,
               workers_on_device: int = 1) -> None:
    """One process's share of the search (also the single-process path, which passes the data it loaded): it
    runs trials while the invocation's `budget` (a shared multiprocessing Value) has any left. A trial ended by
    SIGTERM is failed and enqueued once more (the next start trains it), as a killed worker's is."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(s.device)
    share_memory(device, workers_on_device)  # several workers on one GPU: each gets its share of its memory
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    train, val = data or load_data(s)
    study = open_study(s)
    objective, t0 = Objective(s, train, val), time.time()
    try:
        while (timeout is None or time.time() - t0 < timeout) and may_take_another(study, s.time_budget) \
                and take_trial(budget):
            study.optimize(objective, n_trials=1, callbacks=[say_trial], catch=FAILURES, gc_after_trial=True)
    except Terminated:
        if objective.trial is not None:
            failed = study._storage.get_trial(objective.trial._trial_id)
            reason = failed.user_attrs.get("fail_reason", "")
            if failed.state == optuna.trial.TrialState.FAIL and reason.startswith("terminated"):
                retry_once(study, failed)
        raise


def worker_process(*args) -> None:
    """A `--workers` process: run_worker, and a search that cannot go on (no proposal within the FLOPs cap) ends it
    with one line and exit status 2."""
    try:
        run_worker(*args)
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


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
    budget = study.user_attrs.get(BUDGET_ATTR)
    left = f"; {say_minutes(left_s(budget))} of the budget left" if budget else ""
    print(f"trial {t.number} {t.state.name.lower()}{how}: F={f:.4f} best={best:.4f} "
          f"params={a.get('params', 0):,} {seconds:.0f} s{left}", flush=True)


def n_finished(study: optuna.Study) -> int:
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=done))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        s, storage, study, data = prepare(args)
    except (ValueError, DataError, StorageError, OSError) as e:  # SpaceError is a ValueError
        print(f"error: {e}", file=sys.stderr)
        return 2
    begin(study, storage, s, given_portfolio=args.portfolio is not None)
    rung, proxy_s, ran = pending_rung(study, s), 0.0, 0
    if rung is None:  # the rule: an unfinished rung is finished first, alone
        rung, t0 = s.rung(), time.time()
        failed, ran = run_proxy_phase(s, args, data) if args.trials else (None, 0)
        if failed is not None:
            return failed
        proxy_s = time.time() - t0
        if args.trials:
            print(f"\n{ran} trials in {proxy_s:.0f} s (this command's; other processes on the study count their own)")
        if args.trials and s.time_budget and ran < args.trials:
            print(f"search: {proxy_end_note(s.time_budget, ran)}", flush=True)
        if rung.k:
            study.set_user_attr(PENDING_ATTR, dataclasses.asdict(rung))  # the proxy phase is over: the rung is due
    rung_s = second_rung(s, rung) if rung.k else 0.0
    if rung_s is None:
        return 130
    study = open_study(s)
    if s.time_budget:  # a resume that trained nothing keeps its plan
        close_plan(study, s.time_budget, bool(rung_s or ran), best_proxy(study))
    text = summary(study, s) + (f"\nrung 2: {rung_s:.0f} s of training" + (
        f" ({rung_s / proxy_s:.0%} of this run's proxy phase)" if proxy_s > 1 else "") if rung.k else "")
    save_dashboard_note(study, s, text)
    print(text)
    return 0


def prepare(args: argparse.Namespace) -> tuple[Settings, optuna.storages.BaseStorage, optuna.Study,
                                                  tuple[Split, Split]]:
    """Every check that can refuse the command, in one line and before anything is written: the flags, the
    settings (a resumed study's own where a flag is left out), the data, the storage and the study."""
    validate(args)
    given = given_budget(args)  # refused here when too small: before the data folder is resolved or generated
    storage = open_storage(args.storage, heartbeat=args.heartbeat) if storage_exists(args.storage) else None
    recorded = recorded_attrs(storage, study_name(args))
    s = settings_from_args(args, recorded)
    apply_budget(s, args, given or recorded.get(BUDGET_ATTR))
    if args.trials is None:
        args.trials = UNLIMITED_TRIALS if s.time_budget else DEFAULT_TRIALS
    if not args.trials and not s.rung_k:
        raise ValueError("--trials 0 runs only the second rung, and the rung is off here (--rung 0, or the "
                         "device's default: 0 on CUDA): give --rung K")
    s.fixed = fixed_params(args, storage)
    data = load_data(s)  # validates every file: fail fast on a bad folder, before anything is written
    storage = storage or open_storage(s.storage, heartbeat=s.heartbeat, must_exist=not args.trials)
    if not args.trials:  # only the rung: on a study that has trials, nothing created
        require_study(storage, s.study)
        if not optuna.load_study(study_name=s.study, storage=storage).get_trials(
                deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
            raise ValueError(f"--trials 0 runs only the second rung, on the study's trials, and study "
                             f"{s.study!r} has no complete trial yet")
    study = open_study(s, storage)
    check_resumable(study, s)
    return s, storage, study, data


def begin(study: optuna.Study, storage: optuna.storages.BaseStorage, s: Settings, given_portfolio: bool) -> None:
    """Before any trial: dead workers' trials failed (a journal file has no heartbeat), the settings recorded, the
    portfolio entered, and a line saying what runs."""
    finished = n_finished(study)
    if not isinstance(storage, optuna.storages.RDBStorage):
        for note in fail_dead_trials(study):
            print(f"note: {note}", flush=True)
    record_settings(study, s)  # before the portfolio: a process started together that sees trials sees them
    if s.time_budget:
        study.set_user_attr(BUDGET_ATTR, s.time_budget)
    dropped = enter_portfolio(study, storage, s, given=given_portfolio)
    print(f"search: study {s.study!r} in {s.storage} ({finished} trials so far); data {s.data}; "
          f"proxy {s.proxy_size} px x {s.proxy_epochs} epochs on {s.subset:.0%} of train, scored by {s.signal}; "
          f"device {s.device}; "
          f"FLOPs cap {f'{s.flops_cap:g}x the costliest preset' if s.flops_cap else 'none'}; "
          f"budget < {BUDGET:,} params"
          + (f"; fixed: {', '.join(f'{k}={v}' for k, v in s.fixed.items())}" if s.fixed else ""), flush=True)
    if s.time_budget:
        print(f"search: {describe_budget(s.time_budget)}", flush=True)
    if dropped:
        print(f"search: another process enqueued the portfolio at the same moment; dropped the duplicate trials "
              f"{', '.join(f'#{n}' for n in dropped)} (failed untrained, user attr duplicate_of)", flush=True)


def second_rung(s: Settings, rung: RungSetting) -> float | None:
    """The second rung's runs (search.rung); the seconds they trained, None when interrupted (said)."""
    print(f"rung 2: the top {rung.k} complete trials at {rung.describe()}", flush=True)
    study, say, ask = open_study(s), print, None
    if s.time_budget:  # the limit for picks is what the plan leaves the final; no run starts that cannot end
        study.set_user_attr(MINUTES_ATTR, rung_limit(study, s.time_budget, rung.k))
        ask = gate(study, s.time_budget)
        say = lambda line: print(f"{line} [{say_minutes(left_s(s.time_budget))} of the budget left]", flush=True)
    try:
        return run_rung(study, rung, SplitCache(s.data, subset=rung.subset), pick_device(s.device),
                        s.final_schedule, say=say, gate=ask)
    except KeyboardInterrupt:
        print("\ninterrupted during the second rung: finished rung runs are saved; the same command finishes "
              "the rung (and adds no proxy trials)", file=sys.stderr)
        return None


def given_budget(args: argparse.Namespace) -> dict | None:
    """A new time budget from --time-budget, starting now (None without the flag); a PlanError when it is too
    small for this device's ladder."""
    if args.time_budget is None:
        return None
    device = pick_device(args.device)
    rung_k = device_defaults(device)["rung_k"] if args.rung is None else args.rung
    entries = len(load_portfolio(args.portfolio) if args.portfolio else PORTFOLIO)
    return new_budget(parse_duration(args.time_budget), str(device), entries, rung_k, args.workers)


def apply_budget(s: Settings, args: argparse.Namespace, budget: dict | None) -> None:
    """Settings under a budget (a new one, or the one a resumed study recorded): the rung's picks and the schedule
    it predicts finals at are the plan's (--rung still decides), and --final-minutes is the plan's to set."""
    s.time_budget = budget
    if not budget:
        return
    if args.final_minutes is not None:
        raise ValueError(f"--final-minutes with a time budget (study {s.study!r} runs under one): the plan sets the "
                         f"final's minutes; give --time-budget to plan anew instead")
    s.final_schedule = budget["final_schedule"]
    if args.rung is None:
        s.rung_k = budget["rung_k"]


def best_proxy(study: optuna.Study) -> int | None:
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return max(done, key=lambda t: t.value).number if done else None


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


def run_proxy_phase(s: Settings, args: argparse.Namespace, data: tuple[Split, Split]) -> tuple[int | None, int]:
    """The proxy trials, in this process or `--workers` processes: (an exit status when they could not finish,
    else None; the number of trials this command ran). SIGTERM (timeout, a batch scheduler) ends the workers too:
    their unfinished trials are failed and retried at the next start."""
    ctx = mp.get_context("spawn")
    budget = ctx.Value("i", args.trials)  # exactly --trials trials, whatever the number of workers
    ran = lambda: args.trials - budget.value
    procs: list = []

    def terminate(signum, frame):
        if args.workers == 1:  # the trial trains in this process
            raise Terminated(signum)
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
        procs += [ctx.Process(target=worker_process, args=(s, budget, args.timeout, threads, None, args.workers))
                  for _ in range(args.workers)]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
    except Terminated as e:
        print(f"\nterminated (signal {e.signum}): the running trial is failed and enqueued again; finished trials are "
              f"saved, re-run the same command to continue", file=sys.stderr, flush=True)
        return 128 + e.signum, ran()
    except KeyboardInterrupt:
        print("\ninterrupted: finished trials are saved; re-run the same command to continue", file=sys.stderr)
        return 130, ran()
    except SpaceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2, ran()
    finally:
        signal.signal(signal.SIGTERM, previous)
    crashed = [proc.exitcode for proc in procs if proc.exitcode]
    if crashed and set(crashed) == {2}:
        return 2, ran()  # each said why in one line
    if crashed:
        print(f"error: {len(crashed)} of {args.workers} workers ended with an exception (traceback above); "
              f"finished trials are saved", file=sys.stderr)
        return 1, ran()
    return None, ran()


if __name__ == "__main__":
    sys.exit(main())
