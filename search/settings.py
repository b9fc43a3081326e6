"""What a search runs under (`Settings`): built from the command line and, for a resumed study, from what the study
recorded, so that a resume keeps its data folder, proxy, sampler and pruner (a flag that would change one is
refused: the study's F values would stop being comparable); written into the study for train.final and analysis."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path

import optuna

from search.cli import OVER_LIMIT_DEFAULT
from search.plan import BUDGET_ATTR
from search.rung import MINUTES_ATTR, SETTING_ATTR, RungSetting
from search.storage import HEARTBEAT_S, pick_trial, require_study, study_names
from space.portfolio import PORTFOLIO, Entry, load_portfolio
from space.sample import ADDED_PARAMS, check_params, parse_assignments, recipe_params
from train.data import resolve_data
from train.infer import device_defaults, pick_device


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
    flops_cap: float = 0.0  # draw again any proposal costing more than this multiple of the costliest preset's FLOPs
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
    time_budget: dict | None = None  # search.plan's budget record (BUDGET_ATTR): seconds, start, the plan's figures

    def rung(self) -> RungSetting:
        # without a limit nothing is over it: "reference" trains what "own" does, and keeps own's id and records
        over_limit = self.over_limit if self.final_minutes is not None else "own"
        return RungSetting(self.rung_k, self.rung_schedule, self.rung_subset, self.signal, self.seed, over_limit)


def recorded_attrs(storage: optuna.storages.BaseStorage | None, study: str | None) -> dict:
    """The user attrs of study `study` when `storage` holds it, else {} (a new study)."""
    if storage is None or study is None or study not in study_names(storage):
        return {}
    return dict(optuna.load_study(study_name=study, storage=storage).user_attrs)


def _kept(flag: str, given, recorded, default):
    """A setting of a resumed study: the recorded value unless the flag gives one; a given value that differs from
    the recorded one is refused."""
    if given is not None and recorded is not None and given != recorded:
        raise ValueError(f"{flag} {given}: the study was searched with {recorded}; its F values would not be "
                         f"comparable: leave the flag out, or use a new --study")
    return next(v for v in (given, recorded, default) if v is not None)


def study_data(args: argparse.Namespace, recorded: dict) -> Path:
    """The data folder: a resumed study's own (refusing another while it exists), else `resolve_data`."""
    folder = recorded.get("data")
    if folder is None:
        return resolve_data(args.data)
    if args.data is None:
        if not Path(folder).is_dir():
            raise ValueError(f"the study was searched on {folder}, which is gone: pass --data ROOT")
        return Path(folder)
    if Path(args.data).resolve() != Path(folder).resolve() and Path(folder).is_dir():
        raise ValueError(f"--data {args.data}: the study was searched on {folder}; its F values would not be "
                         f"comparable: leave --data out, or use a new --study")
    return Path(args.data)


def study_name(args: argparse.Namespace) -> str:
    """--study, else facenas-<data folder name>."""
    return args.study or f"facenas-{resolve_data(args.data).resolve().name}"


def settings_from_args(args: argparse.Namespace, recorded: dict | None = None) -> Settings:
    """The search's settings: the flags given, else what the study recorded (`recorded`, a resume), else the device's
    defaults."""
    recorded = recorded or {}
    proxy = recorded.get("proxy") or {}
    d = device_defaults(pick_device(args.device))
    data = study_data(args, recorded)
    return Settings(
        data=data, study=study_name(args), storage=args.storage,
        artifact_dir=args.artifact_dir,
        proxy_size=args.proxy_size or proxy.get("size") or d["proxy_size"],
        proxy_epochs=args.proxy_epochs or proxy.get("epochs") or d["proxy_epochs"],
        subset=args.subset or proxy.get("subset") or d["subset"], signal=args.signal or proxy.get("signal") or
        d["signal"], sampler=_kept("--sampler", args.sampler, proxy.get("sampler"), "tpe"),
        pruner=_kept("--pruner", args.pruner, proxy.get("pruner"), "hyperband"),
        seed=next(v for v in (args.seed, proxy.get("seed"), 0) if v is not None),
        device=str(pick_device(args.device)), loader_workers=d["loader_workers"], heartbeat=args.heartbeat,
        flops_cap=next(v for v in (args.flops_cap, proxy.get("flops_cap"), d["flops_cap"]) if v is not None),
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


def fixed_params(args: argparse.Namespace, storage: optuna.storages.BaseStorage | None) -> dict:
    """--recipe-from's recipe (a study of `storage`, None when it does not exist yet), then the --fix values over it;
    every name and value checked against the space."""
    fixed = {}
    if args.recipe_from:
        name, _, number = args.recipe_from.partition(":")
        if number and not number.isdigit():
            raise ValueError(f"--recipe-from {args.recipe_from}: expected STUDY or STUDY:TRIAL (a trial number)")
        if storage is None:
            raise ValueError(f"--recipe-from {args.recipe_from}: study {name!r} not found; the storage "
                             f"{args.storage} does not exist yet")
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


def record_settings(study: optuna.Study, s: Settings) -> None:
    """What the study was searched under, as study user attrs (train.final and analysis read them). A study that
    recorded a `final_minutes` keeps it unless `--final-minutes` was given (`s.final_minutes_given`): a new default
    does not change an earlier study's pick; a given value that changes it is said. Likewise a study whose last rung
    finished keeps that rung's `over_limit` unless `--over-limit-recipe` was given, so its next rung keeps the id."""
    if s.time_budget:  # the budget's plan sets the limit (the rung and the search's end refine it: a resume of the
        # same budget keeps the refined one)
        same = study.user_attrs.get(BUDGET_ATTR) == s.time_budget and MINUTES_ATTR in study.user_attrs
        s.final_minutes = study.user_attrs[MINUTES_ATTR] if same else s.time_budget["final_minutes"]
    elif MINUTES_ATTR in study.user_attrs and not s.final_minutes_given:
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
