"""The search's second rung: after the proxy trials, the top k complete trials are trained again at a higher
fidelity (a `train.schedule` on a share of train), and `train.final --study best` takes the best of them.

The rung-2 F is stored in the same study, but as study user attrs `rung2:<trial>:<setting id>` (shown by
optuna-dashboard under the study's user attributes, by its note and by `analysis.report` beside the proxy F), not
as the trials' own user attrs: Optuna refuses any change to a finished trial (UpdateFinishedTrialError), and a
second value per trial would be a second objective, which Hyperband cannot prune on. A rung run trains exactly as
`analysis.fidelity --proxy SIZE:EPOCHS:SUBSET` re-runs a proxy variant (same function, same seed rule), so the
tau measured there is the rung's.

Resuming: when a proxy phase ends the study records `rung2_pending`; until the rung has finished, the same
`search.run` command only finishes the rung (no rung run is trained twice, no proxy trial is added); run it once
more to add proxy trials.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
import torch

from space.sample import replay
from train.data import Split
from train.loop import fit_new, proxy_signals
from train.schedule import describe_schedule, parse_schedule

RUNG_ATTR = "rung2"
PENDING_ATTR = "rung2_pending"
SETTING_ATTR = "rung2_setting"  # the study's current rung setting (what train.final --study best reads)


@dataclass(frozen=True)
class RungSetting:
    k: int  # trials promoted (0 = no rung)
    schedule: str  # train.schedule format, e.g. "128:4"
    subset: float  # share of the training split
    signal: str  # the study's ranking signal (train.loop.proxy_signals)
    seed: int  # the study's --seed: a rung run of trial n is seeded seed + n, as its proxy was

    @property
    def id(self) -> str:
        fidelity = {k: v for k, v in dataclasses.asdict(self).items() if k != "k"}  # k does not change a value
        return hashlib.sha1(json.dumps(fidelity, sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        return f"{describe_schedule(parse_schedule(self.schedule))} on {self.subset:.0%} of train, {self.signal}"


def promoted(study: optuna.Study, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k best complete trials by proxy value."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(done, key=lambda t: -t.value)[:k]


def rung_records(study: optuna.Study, setting: RungSetting | None = None) -> dict[int, dict]:
    """Trial number -> rung-2 record at `setting` (default: the study's current rung setting)."""
    if setting is None:
        saved = study.user_attrs.get(SETTING_ATTR)
        if not saved:
            return {}
        setting = RungSetting(**saved)
    suffix = f":{setting.id}"
    return {int(key.split(":")[1]): value for key, value in study.user_attrs.items()
            if key.startswith(RUNG_ATTR + ":") and key.endswith(suffix)}


def best_by_rung(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, dict] | None:
    """The trial with the best rung-2 F at the study's rung setting, with its record; None without rung runs."""
    records = rung_records(study)
    if not records:
        return None
    number = max(records, key=lambda n: records[n]["f"])
    return study.trials[number], records[number]


def train_at(trial: optuna.trial.FrozenTrial, splits: Mapping[int, tuple[Split, Split]], schedule: str, seed: int,
             device: torch.device, **fit_kwargs) -> dict:
    """Re-train a trial's configs at another fidelity as its proxy was trained (initial weights from seed + its
    number, val scored every epoch, no EMA); returns every ranking signal and the seconds it took."""
    arch, loss_cfg, train_cfg = replay(trial)
    t0 = time.perf_counter()
    _, fitted = fit_new(arch, splits, loss_cfg, train_cfg, seed=seed + trial.number, schedule=parse_schedule(schedule),
                        device=device, **fit_kwargs)
    return {**proxy_signals(fitted.history), "seconds": round(time.perf_counter() - t0, 1)}


def run_rung(study: optuna.Study, setting: RungSetting, splits: Mapping[int, tuple[Split, Split]],
             device: torch.device, say: Callable[[str], None] = print) -> float:
    """Train the promoted trials that have no record at `setting`, recording each as soon as it is done; clears
    the pending mark at the end. Returns the seconds spent training."""
    study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
    study.set_user_attr(PENDING_ATTR, dataclasses.asdict(setting))
    done, spent = rung_records(study, setting), 0.0
    for trial in promoted(study, setting.k):
        if trial.number in done:
            say(f"rung 2: trial {trial.number} already trained at this setting (F {done[trial.number]['f']:.4f})")
            continue
        found = train_at(trial, splits, setting.schedule, setting.seed, device, desc=f"rung 2 #{trial.number}")
        record = {"f": found[setting.signal], **found, "proxy_f": trial.value, **dataclasses.asdict(setting)}
        study.set_user_attr(f"{RUNG_ATTR}:{trial.number}:{setting.id}", record)
        spent += found["seconds"]
        say(f"rung 2: trial {trial.number}: proxy F {trial.value:.4f} -> rung-2 F {record['f']:.4f} "
            f"({found['seconds']:.0f} s)")
    study.set_user_attr(PENDING_ATTR, None)
    return spent
