"""The search's second rung: after the proxy trials, the top k complete trials are trained again at a higher
fidelity (a `train.schedule` on a share of train), and `train.final --study best` takes the best of them.

The rung-2 F is stored in the same study, but as study user attrs `rung2:<trial>:<setting id>` (shown by
optuna-dashboard under the study's user attributes, by its note and by `analysis.report` beside the proxy F), not
as the trials' own user attrs: Optuna refuses any change to a finished trial (UpdateFinishedTrialError), and a
second value per trial would be a second objective, which Hyperband cannot prune on. A rung run trains exactly as
`analysis.fidelity --proxy SIZE:EPOCHS:SUBSET` re-runs a proxy variant (same function, same seed rule), so the
tau measured there is the rung's.

Beside the top k, the rung always trains the reference: the portfolio entry (`space.portfolio`) with the best proxy
F, even when it ranks below the top k. Recipes are judged at the rung, not by the proxy (docs/results.md, "Recipe
fidelity": over 8 recipes on one network the rung ordered the final's F with a Kendall tau 0.1 or more above the
proxy's, the rule fixed before the runs): once those runs are done, the recipe stage trains the best searched network
at the rung once more, at the reference's recipe (a trial of its own, user attr `recipe_stage`, FAIL in the study's
terms as it has no proxy F). The best rung-2 F is what `train.final --study best` ships, so it ships a searched
network only when that network beat the reference at the rung; under a time budget's plan, the best rung-2 F plus the
ladder's gain of the schedule the plan affords each pick (`best_by_rung`). `verdict` says which won and by how much.
Each rung run records its seconds per epoch and per scoring at each size, and from them the predicted minutes of
`train.final` at the device's default schedule; `search.run --final-minutes M` (study user attr `final_minutes`)
leaves picks predicted over M out of the choice. With `RungSetting.over_limit` "reference" (`search.run
--over-limit-recipe reference`, the default since it shipped the same picks in less time on both CPU flow studies)
the reference is trained first and a searched pick whose final, foretold from its
proxy speed against the reference's (`proxy_minutes`), is over M is not trained at its own recipe: its record says
`redirected` and its network is trained at the reference's recipe as a recipe stage trial, which can ship.

Resuming: when a proxy phase ends the study records `rung2_pending`; until the rung has finished, the same
`search.run` command only finishes the rung (no rung run is trained twice, no proxy trial is added); run it once
more to add proxy trials. `rung2_setting` names the last rung that finished, and is what `train.final` chooses by:
an interrupted new rung does not hide a finished one. A rung run whose loss becomes NaN or that runs out of memory
is recorded as failed and tried once more by the next run of the command; `--rung 0` leaves an unfinished rung.

Several processes on one study (machines on PostgreSQL, or two commands on one journal file) share the rung: each
rung run is claimed first, as a trial of the side study `<study>.rung2-claims` (`Claims`), and the lowest-numbered
live claim of a run wins, so no run is trained twice; the pending mark is cleared by whoever finishes the last run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import optuna
import torch
from optuna.trial import TrialState

from search.plan import BUDGET_ATTR, PLAN_ATTR, planned_gains
from search.storage import CLAIMS_SUFFIX
from search.workers import gone, this_worker
from space.sample import ADDED_PARAMS, as_trial, recipe_params, replay
from train.data import Split
from train.loop import NonFiniteLoss, fit_new, full_seconds, proxy_signals, stage_seconds
from train.schedule import describe_schedule, parse_schedule

RUNG_ATTR = "rung2"
PENDING_ATTR = "rung2_pending"
SETTING_ATTR = "rung2_setting"  # the study's current rung setting (what train.final --study best reads)
MINUTES_ATTR = "final_minutes"  # search.run --final-minutes: picks predicted slower than this are left out
FAILURES = (NonFiniteLoss, torch.OutOfMemoryError)  # a trial or rung run fails, the study goes on; else: a bug
MAX_ATTEMPTS = 2  # a rung run that failed is tried once more
STAGE_ATTR = "recipe_stage"  # user attr of a recipe stage trial: {"network_of": n, "recipe_of": reference number};
# study user attr f"{STAGE_ATTR}:<setting id>": the pairs the recipe stage trained at that rung setting (a later
# search at the same setting whose rung finds a new best searched network adds its pair)


@dataclass(frozen=True)
class RungSetting:
    k: int  # trials promoted (0 = no rung)
    schedule: str  # train.schedule format, e.g. "128:4"
    subset: float  # share of the training split
    signal: str  # the study's ranking signal (train.loop.proxy_signals)
    seed: int  # the study's --seed: a rung run of trial n is seeded seed + n, as its proxy was
    over_limit: str = "own"  # a searched pick predicted over final_minutes by its proxy speed trains at the rung at
    # its own recipe ("own") or, as a recipe stage pairing, at the reference's ("reference"; `redirect`)

    @property
    def id(self) -> str:
        # k does not change a value; over_limit "own" is left out so that a setting keeps the id it had before
        fidelity = {k: v for k, v in dataclasses.asdict(self).items()
                    if k != "k" and not (k == "over_limit" and v == "own")}
        return hashlib.sha1(json.dumps(fidelity, sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        return (f"{describe_schedule(parse_schedule(self.schedule))} on {self.subset:.0%} of train, {self.signal}"
                + (", picks predicted over the time limit at the reference's recipe"
                   if self.over_limit == "reference" else ""))


def reference(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The portfolio entry that did best in the proxy phase (None when no entry completed)."""
    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
            if "portfolio" in t.user_attrs]
    return max(done, key=lambda t: t.value, default=None)


def reference_number(study: optuna.Study, records: dict[int, dict]) -> int | None:
    """The one reference of a rung setting's `records`: the portfolio entry with the best proxy F now when its run
    is recorded (a resume can make another entry the reference: an earlier run's flag is then history), else the
    last run recorded as the reference; None when there is none."""
    ref = reference(study)
    if ref is not None and ref.number in records:
        return ref.number
    return max((n for n, r in records.items() if r.get("reference")), default=None)


def searched(trial: optuna.trial.FrozenTrial) -> bool:
    """A network and recipe the sampler proposed (not a portfolio entry, not a recipe stage pairing)."""
    return "portfolio" not in trial.user_attrs and STAGE_ATTR not in trial.user_attrs


def stage_trials(study: optuna.Study) -> dict[tuple[int, int], optuna.trial.FrozenTrial]:
    """The recipe stage's trials by (network, recipe) pair: where two processes added one at the same moment, the
    lower-numbered."""
    first: dict[tuple[int, int], optuna.trial.FrozenTrial] = {}
    for t in study.get_trials(deepcopy=False):
        pair = t.user_attrs.get(STAGE_ATTR)
        if pair:
            first.setdefault((pair["network_of"], pair["recipe_of"]), t)
    return first


def stage_pairs(study: optuna.Study, setting: RungSetting) -> list[dict]:
    """The pairs the recipe stage chose at `setting`, in order."""
    return study.user_attrs.get(f"{STAGE_ATTR}:{setting.id}", [])


def stage_trials_at(study: optuna.Study, setting: RungSetting) -> list[optuna.trial.FrozenTrial]:
    """The trials the recipe stage chose at `setting` (none before it has chosen one), and those of the picks the rung
    redirected to the reference's recipe there (read from their records too: two processes appending to the chosen
    list at once can drop one)."""
    trials = stage_trials(study)
    pairs = [(p["network_of"], p["recipe_of"]) for p in stage_pairs(study, setting)]
    pairs += [(p["network_of"], p["recipe_of"]) for p in
              (r["redirected"]["network_at"] for r in redirected(study, setting).values())]
    return [trials[p] for p in dict.fromkeys(pairs) if p in trials]


def promoted(study: optuna.Study, setting: RungSetting) -> list[optuna.trial.FrozenTrial]:
    """The k best complete trials by proxy value, the reference when it is not among them, and the recipe stage's
    trial at this setting once it is chosen (none without a rung)."""
    if not setting.k:
        return []
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    runs = sorted(done, key=lambda t: -t.value)[:setting.k]
    ref = reference(study)
    if ref is not None and ref.number not in {t.number for t in runs}:
        runs.append(ref)
    return runs + [t for t in stage_trials_at(study, setting) if t.number not in {r.number for r in runs}]


def stage_pairing(study: optuna.Study, setting: RungSetting) -> dict | None:
    """The recipe stage's pairing once the rung's runs at `setting` are done: the params of the best searched
    network at the rung (over `final_minutes` or not: the recipe sets much of a final's time, and the pair's own
    prediction is judged against it like any other) with the reference's recipe, and the pair; None when
    there is no reference or no searched network at the rung, when that network already trains at the reference's
    recipe, or when the stage at this setting has trained the pair already."""
    ref = reference(study)
    records = {n: r for n, r in rung_records(study, setting).items() if searched(study.trials[n])}
    if ref is None or not records:
        return None
    best = study.trials[max(records, key=lambda n: records[n]["f"])]
    pairing = pairing_of(best, ref)
    if recipe_params(best.params) == recipe_params(ref.params) or pairing[STAGE_ATTR] in stage_pairs(study, setting):
        return None
    return pairing


def pairing_of(network: optuna.trial.FrozenTrial, ref: optuna.trial.FrozenTrial) -> dict:
    """The params of `network`'s network at `ref`'s recipe (parameters added to the space since `network` was
    searched at the values it replays with), and the pair."""
    own = recipe_params(network.params)
    params = {k: v for k, v in {**ADDED_PARAMS, **network.params}.items() if k not in own}
    return {"params": {**params, **recipe_params(ref.params)},
            STAGE_ATTR: {"network_of": network.number, "recipe_of": ref.number}}


def add_stage_trial(study: optuna.Study, setting: RungSetting, pairing: dict) -> optuna.trial.FrozenTrial:
    """The pairing's trial (added to the study unless an earlier rung setting added it), chosen for `setting`."""
    pair = pairing[STAGE_ATTR]
    key = (pair["network_of"], pair["recipe_of"])
    if key not in stage_trials(study):
        study.add_trial(as_trial(pairing["params"], {
            STAGE_ATTR: pair, "fail_reason": f"not a proxy trial: the recipe stage trains #{pair['network_of']}'s "
                                             f"network at #{pair['recipe_of']}'s recipe at the second rung only"}))
    chosen = stage_pairs(study, setting)
    if pair not in chosen:
        study.set_user_attr(f"{STAGE_ATTR}:{setting.id}", [*chosen, pair])
    return stage_trials(study)[key]


def current_setting(study: optuna.Study) -> RungSetting | None:
    """The setting the study's rung records are read at: the last finished rung's, else the unfinished one's."""
    saved = study.user_attrs.get(SETTING_ATTR) or study.user_attrs.get(PENDING_ATTR)
    return RungSetting(**saved) if saved else None


def _records(study: optuna.Study, setting: RungSetting | None) -> dict[int, dict]:
    setting = setting or current_setting(study)
    if setting is None:
        return {}
    suffix = f":{setting.id}"
    return {int(key.split(":")[1]): value for key, value in study.user_attrs.items()
            if key.startswith(RUNG_ATTR + ":") and key.endswith(suffix)}


def rung_records(study: optuna.Study, setting: RungSetting | None = None) -> dict[int, dict]:
    """Trial number -> rung-2 record at `setting` (default: the last finished rung's setting, else the unfinished
    one's); failed rung runs left out."""
    return {n: r for n, r in _records(study, setting).items() if "f" in r}


def finished(study: optuna.Study, setting: RungSetting) -> set[int]:
    """The trials whose rung run at `setting` is done: trained, failed MAX_ATTEMPTS times, skipped for the time
    budget the study runs under (a new budget may train it), or redirected to the
    reference's recipe while their foretold minutes are over the study's limit (a limit raised above them since
    sends them to the rung at their own recipe)."""
    limit, budget = study.user_attrs.get(MINUTES_ATTR), (study.user_attrs.get(BUDGET_ATTR) or {}).get("started")
    return {n for n, r in _records(study, setting).items()
            if "f" in r or r.get("attempts", 0) >= MAX_ATTEMPTS
            or ("skipped" in r and r.get("budget_started") == budget)
            or ("redirected" in r and limit is not None and r["redirected"]["predicted_minutes"] > limit)}


def unfinished(study: optuna.Study, setting: RungSetting) -> list[int]:
    """The promoted trials whose run at `setting` is not done yet."""
    return [t.number for t in promoted(study, setting) if t.number not in finished(study, setting)]


def unfinished_note(study: optuna.Study) -> str | None:
    """A line for train.final when a rung is unfinished: which rung the choice comes from instead."""
    pending = study.user_attrs.get(PENDING_ATTR)
    if not pending:
        return None
    setting, last = RungSetting(**pending), study.user_attrs.get(SETTING_ATTR)
    todo = unfinished(study, setting)
    runs = (f"{len(todo)} runs to go: {', '.join(f'#{n}' for n in todo)}" if todo else
            "the recipe stage's run is still to be chosen and trained")
    head = f"the second rung at {setting.describe()} is unfinished ({runs}; run the search command again to finish it)"
    if last and RungSetting(**last).id != setting.id:  # another fidelity: its records are its own
        before = RungSetting(**last).describe()
        if before == setting.describe():  # they differ in what describe() leaves out (the seed)
            before += f" (seed {last['seed']})"
        return f"{head}; choosing by the last finished rung, at {before}"
    return f"{head}; choosing among the {len(rung_records(study, setting))} runs it finished"


def within(records: dict[int, dict], limit: float | None) -> dict[int, dict]:
    """The records whose predicted train.final minutes are within `limit` (all without one, or when none is)."""
    kept = {n: r for n, r in records.items() if limit is None or r.get("final_minutes", 0.0) <= limit}
    return kept or records


def within_minutes(study: optuna.Study, records: dict[int, dict]) -> dict[int, dict]:
    """The records within the study's `final_minutes` (`within`)."""
    return within(records, study.user_attrs.get(MINUTES_ATTR))


def pick_of(records: dict[int, dict], gains: dict[int, float]) -> int:
    """The best rung-2 F plus each record's planned gain (none without a plan, or one that misses a record); the
    higher rung-2 F on a tie."""
    gains = covering(gains, records)
    return max(records, key=lambda n: (records[n]["f"] + gains.get(n, 0.0), records[n]["f"]))


def gains_of(study: optuna.Study, records: dict[int, dict]) -> dict[int, float]:
    """Under a time budget's current plan covering every record: trial number -> the ladder's gain of its planned
    schedule over the default (search.plan.planned_gains); else empty (picks compared by rung-2 F alone)."""
    return covering(planned_gains(study.user_attrs.get(PLAN_ATTR) or {}, study.user_attrs.get(BUDGET_ATTR)), records)


def covering(gains: dict[int, float], records: dict[int, dict]) -> dict[int, float]:
    """`gains` when they cover every record, else none: picks are never compared half by the plan."""
    return gains if records and all(n in gains for n in records) else {}


def best_by_rung(study: optuna.Study) -> tuple[optuna.trial.FrozenTrial, dict] | None:
    """The trial with the best rung-2 F at the study's rung setting (among those predicted within its
    `final_minutes`), with its record; None without rung runs. Under a time budget's plan, the best rung-2 F plus
    the ladder's gain of the schedule the plan gives each pick: what it would ship in the time left."""
    records = within_minutes(study, rung_records(study))
    if not records:
        return None
    number = pick_of(records, gains_of(study, records))
    return study.trials[number], records[number]


def budget_text(study: optuna.Study, number: int, records: dict[int, dict]) -> str | None:
    """When the time budget's plan changed the pick: one clause naming the pick and the best rung-2 F, each with its
    planned schedule and its expected F (rung-2 F plus the ladder's gain); None when it did not."""
    gains = gains_of(study, records)
    best = max(records, key=lambda n: records[n]["f"])
    if not gains or best == number or records[best]["f"] == records[number]["f"]:
        return None
    schedules = (study.user_attrs.get(PLAN_ATTR) or {}).get("schedules", {})

    def said(n: int) -> str:
        return (f"{name_of(study.trials[n])} (rung-2 F {records[n]['f']:.4f}, at {schedules[str(n)]['schedule']}: "
                f"{gains[n]:+.4f}, expected {records[n]['f'] + gains[n]:.4f})")
    return (f"the time budget's pick {said(number)} over the best rung-2 F {said(best)}: each judged by its rung-2 F "
            f"plus the ladder's gain of the schedule the plan affords it over the default")


def name_of(trial: optuna.trial.FrozenTrial) -> str:
    entry, pair = trial.user_attrs.get("portfolio"), trial.user_attrs.get(STAGE_ATTR)
    if pair:
        return f"#{trial.number} (#{pair['network_of']}'s network at #{pair['recipe_of']}'s recipe)"
    return f"#{trial.number} ({entry})" if entry else f"#{trial.number} (searched)"


def over_text(minutes: float, limit: float | None) -> str:
    """`minutes` rounded only as far as it still reads over `limit` (never "40 min > --final-minutes 40")."""
    for digits in range(4):
        if limit is None or round(minutes, digits) > limit:
            return f"{minutes:.{digits}f}"
    return f"{minutes:g}"


def proxy_text(value: float | None) -> str:
    """A rung record's proxy F ("-" for a recipe stage trial, which has none)."""
    return "-" if value is None else f"{value:.4f}"


def verdict(study: optuna.Study) -> str | None:
    """One line: the rung's pick against the reference, or None without rung runs."""
    found = best_by_rung(study)
    if found is None:
        return None
    trial, record = found
    records, limit = rung_records(study), study.user_attrs.get(MINUTES_ATTR)
    kept = within_minutes(study, records)
    none_within = (f" (no pick is predicted within --final-minutes {limit:g}: all were compared)"
                   if limit is not None and all(r.get("final_minutes", 0.0) > limit for r in records.values()) else "")
    by_budget = budget_text(study, trial.number, kept)
    if by_budget:
        return by_budget + none_within
    ref = reference_number(study, records)
    if ref is None:
        return (f"the rung's pick {name_of(trial)} (rung-2 F {record['f']:.4f}); no portfolio entry at the rung"
                + none_within)
    if ref not in kept:
        return (f"the rung's pick {name_of(trial)} (rung-2 F {record['f']:.4f}); the reference "
                f"{name_of(study.trials[ref])} ({records[ref]['f']:.4f}) was left out: predicted "
                f"{over_text(records[ref].get('final_minutes', 0.0), limit)} min > --final-minutes {limit:g}")
    if ref == trial.number:
        rivals = [n for n in kept if "portfolio" not in study.trials[n].user_attrs]
        best = max(rivals, key=lambda n: records[n]["f"], default=None)
        beaten = (f", {record['f'] - records[best]['f']:+.4f} over the best searched network "
                  f"{name_of(study.trials[best])} ({records[best]['f']:.4f})" if best is not None else "")
        out = sorted((n for n in records if n not in kept), key=lambda n: -records[n]["f"])
        left_out = (f"; left out, predicted over --final-minutes {limit:g}: " + ", ".join(
            f"{name_of(study.trials[n])} ({records[n]['f']:.4f}, "
            f"{over_text(records[n].get('final_minutes', 0.0), limit)} min)"
            for n in out) if out else "")
        return (f"the reference {name_of(trial)} won the rung (rung-2 F {record['f']:.4f}){beaten}{left_out}"
                f"{none_within}")
    return (f"the rung's pick {name_of(trial)} (rung-2 F {record['f']:.4f}) beat the reference "
            f"{name_of(study.trials[ref])} ({records[ref]['f']:.4f}) by {record['f'] - records[ref]['f']:+.4f}"
            + none_within)


def train_at(trial: optuna.trial.FrozenTrial, splits: Mapping[int, tuple[Split, Split]], schedule: str, seed: int,
             device: torch.device, **fit_kwargs) -> dict:
    """Re-train a trial's configs at another fidelity as its proxy was trained (initial weights from seed + its
    number, val scored every epoch, no EMA); returns every ranking signal, the seconds it took and its seconds per
    epoch and per scoring at each size (`train.loop.stage_seconds`)."""
    arch, loss_cfg, train_cfg = replay(trial)
    t0 = time.perf_counter()
    _, fitted = fit_new(arch, splits, loss_cfg, train_cfg, seed=seed + trial.number, schedule=parse_schedule(schedule),
                        device=device, **fit_kwargs)
    return {**proxy_signals(fitted.history), "seconds": round(time.perf_counter() - t0, 1),
            "stage_seconds": {str(k): v for k, v in stage_seconds(fitted.history, getattr(splits, "subset", 1.0))
                              .items()}}


def final_minutes(record: dict, final_schedule: str) -> float | None:
    """Predicted minutes of `train.final` (training and scoring) through `final_schedule`, from a rung record's
    seconds per epoch and per scoring; None for a record from before they were kept."""
    times = {int(k): v for k, v in (record.get("stage_seconds") or {}).items()}
    return full_seconds(times, parse_schedule(final_schedule)) / 60 if times else None


CLAIM_BEAT_S = 60  # a live claim's `beat` (time.time()) is renewed this often while its run trains
CLAIM_STALE_S = 600  # a claim whose beat is older than this is a dead process's, on whatever host


class Claims:
    """Claims on rung runs, one trial each in the side study `<study>.rung2-claims` (user attr `key`: trial and
    setting id; `worker`: host:pid; `beat`: when its process last said it lives). Trial numbers are handed out
    atomically by every storage, so all processes agree on which claim of a run is the lowest-numbered; the lowest
    one that is not FAIL wins, a COMPLETE one means the run is done. A claim whose process died is failed first: on
    this host as soon as the process is gone, on another host once its beat is `CLAIM_STALE_S` old."""

    def __init__(self, study: optuna.Study):
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)  # not "Using an existing study" at every rung
        try:
            self.study = optuna.create_study(study_name=study.study_name + CLAIMS_SUFFIX, storage=study._storage,
                                             load_if_exists=True)
        finally:
            optuna.logging.set_verbosity(level)
        self.storage = self.study._storage

    @staticmethod
    def dead(t: optuna.trial.FrozenTrial) -> bool:
        """Whether an unfinished claim's process is gone: on this host, by whether it runs (a live process whose
        beat is late still holds its claim); on another host, by a beat older than CLAIM_STALE_S."""
        if t.user_attrs.get("worker", "").rpartition(":")[0] == socket.gethostname():
            return gone(t)
        beat = t.user_attrs.get("beat")
        if beat is None and t.datetime_start is not None:
            beat = t.datetime_start.timestamp()
        return gone(t) or (beat is not None and time.time() - beat > CLAIM_STALE_S)

    @contextlib.contextmanager
    def beating(self, claim: int):
        """Renew the claim's beat every CLAIM_BEAT_S in a thread while the block runs (a rung run trains)."""
        stop = threading.Event()

        def beat():
            while not stop.wait(CLAIM_BEAT_S):
                try:
                    self.storage.set_trial_user_attr(claim, "beat", time.time())
                except optuna.exceptions.UpdateFinishedTrialError:  # released: nothing left to keep alive
                    return
                except Exception as e:  # a storage hiccup (lock, connection): beat again next time, never stop
                    warnings.warn(f"rung claim {claim}: beat not written ({type(e).__name__}: {e}); trying again",
                                  stacklevel=1)
        thread = threading.Thread(target=beat, daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    def _of(self, key: str) -> list[optuna.trial.FrozenTrial]:
        return [t for t in self.study.get_trials(deepcopy=False) if t.user_attrs.get("key") == key]

    def take(self, key: str) -> int | None:
        """The id of this process's claim on run `key` when it is ours to train, else None (done, or another
        live process holds it)."""
        for t in self._of(key):
            if t.state in (TrialState.WAITING, TrialState.RUNNING) and self.dead(t):
                self.release(t._trial_id, TrialState.FAIL)
        mine = self.storage.create_new_trial(self.study._study_id, template_trial=optuna.trial.create_trial(
            state=TrialState.WAITING, user_attrs={"key": key, "beat": time.time(), **this_worker()}))
        rivals = [t for t in self._of(key) if t.state != TrialState.FAIL]
        if min(rivals, key=lambda t: t.number)._trial_id != mine:
            self.release(mine, TrialState.FAIL)
            return None
        self.storage.set_trial_state_values(mine, TrialState.RUNNING)
        return mine

    def release(self, claim: int, state: TrialState, value: float | None = None) -> None:
        try:
            self.storage.set_trial_state_values(claim, state, None if value is None else [value])
        except optuna.exceptions.UpdateFinishedTrialError:  # another process failed it as a dead worker's
            pass

    def held(self, keys: list[str]) -> list[str]:
        """The keys that another process holds a live claim on."""
        return [k for k in keys if any(t.state in (TrialState.WAITING, TrialState.RUNNING) and not self.dead(t)
                                       for t in self._of(k))]


def run_rung(study: optuna.Study, setting: RungSetting, splits: Mapping[int, tuple[Split, Split]],
             device: torch.device, final_schedule: str, say: Callable[[str], None] = print,
             gate: Callable[[optuna.trial.FrozenTrial], str | None] | None = None) -> float:
    """Train the promoted trials whose run at `setting` is not done and not held by another process, recording
    each as soon as it is done (with its predicted `train.final` minutes at `final_schedule`; a NaN loss or an
    out-of-memory as a failed attempt); then the recipe stage (`stage_pairing`), as one more promoted trial. Once
    every promoted run is done, `setting` becomes the study's rung setting and the pending mark is cleared. `gate`
    (search.run's time budget) says why a run must not start: it is recorded as skipped, which finishes it. Returns
    the seconds spent training."""
    study.set_user_attr(PENDING_ATTR, dataclasses.asdict(setting))
    claims, spent, skip_done = Claims(study), 0.0, False
    while True:  # a second pass only after the recipe stage chose its trial: the runs done before go unsaid
        spent += _train_promoted(study, setting, claims, splits, device, final_schedule, say, skip_done, gate)
        skip_done = True
        todo = unfinished(study, setting)
        if todo:
            break
        pairing = stage_pairing(study, setting)
        if pairing is None:
            todo = unfinished(study, setting)  # read again: another process may have chosen the stage's trial
            break
        trial = add_stage_trial(study, setting, pairing)
        say(f"recipe stage: the best searched network at the rung, #{pairing[STAGE_ATTR]['network_of']}, at the "
            f"reference's recipe: trial {trial.number}")
    held = claims.held([f"{RUNG_ATTR}:{n}:{setting.id}" for n in todo])
    if not todo:
        study.set_user_attr(SETTING_ATTR, dataclasses.asdict(setting))
        study.set_user_attr(PENDING_ATTR, None)
    elif held:
        say(f"rung 2: {', '.join(k.split(':')[1] for k in held)} still trained by another process, which finishes "
            f"the rung")
    else:
        say(f"rung 2: {', '.join(f'#{n}' for n in todo)} to be tried again: run the same command once more")
    return spent


def proxy_minutes(trial: optuna.trial.FrozenTrial, ref: optuna.trial.FrozenTrial, ref_record: dict) -> float | None:
    """A promoted trial's `train.final` minutes foretold from its proxy speed, before any rung run of its own: the
    reference's predicted minutes (from its rung run) x the reference's proxy training images/s / the trial's (user
    attr `train_images_per_s`); None when a figure is missing. On the CPU flows it under-predicted the rung's own
    prediction by 1.25-1.45x (docs/results.md), so it errs toward training a pick at its own recipe."""
    mine, theirs = trial.user_attrs.get("train_images_per_s"), ref.user_attrs.get("train_images_per_s")
    minutes = ref_record.get("final_minutes")
    return minutes * theirs / mine if mine and theirs and minutes else None


REFERENCE_WAIT_S = 15  # how often a process waiting for another's reference run looks again


def reference_record(study: optuna.Study, setting: RungSetting, claims: Claims, ref: optuna.trial.FrozenTrial,
                     say: Callable[[str], None], take_over: Callable[[], object] | None = None) -> dict | None:
    """The reference's rung record at `setting`, waiting while another live process trains it; when its run is not
    done and nobody live holds it (its process died), `take_over()` trains it here first; None when it failed."""
    key, said = f"{RUNG_ATTR}:{ref.number}:{setting.id}", False
    while True:
        record = rung_records(study, setting).get(ref.number)
        if record is not None or ref.number in finished(study, setting):
            return record
        if not claims.held([key]):
            if take_over is None:
                return None
            say(f"rung 2: the reference #{ref.number}'s run is not done and no live process trains it: trained here "
                f"first")
            take_over()
            take_over = None
            continue
        if not said:
            say(f"rung 2: waiting for the reference #{ref.number}'s run (trained by another process): the picks' "
                f"predicted minutes are read from it")
            said = True
        time.sleep(REFERENCE_WAIT_S)


def redirected(study: optuna.Study, setting: RungSetting | None = None) -> dict[int, dict]:
    """Trial number -> record of the promoted trials that the rung trained at the reference's recipe instead of
    their own (`RungSetting.over_limit` "reference"): `redirected` holds the predicted minutes and the pair."""
    return {n: r for n, r in _records(study, setting).items() if "redirected" in r}


def _run_list(study: optuna.Study, setting: RungSetting, ref: optuna.trial.FrozenTrial | None
              ) -> tuple[list[optuna.trial.FrozenTrial], bool]:
    """The promoted trials in the order the rung takes them, and whether picks foretold over the study's limit go to
    the reference's recipe (then the reference comes first: the others' foretold minutes are read from its run)."""
    runs = promoted(study, setting)
    redirect = setting.over_limit == "reference" and ref is not None and study.user_attrs.get(MINUTES_ATTR) is not None
    return (sorted(runs, key=lambda t: t.number != ref.number) if redirect else runs), redirect


def run_order(study: optuna.Study, setting: RungSetting | None = None) -> list[int]:
    """The trial numbers of the rung's runs at `setting` (default: the study's) in the order it trains them under the
    study's limit as it is now: each redirected pick's run is its network's pairing with the reference's recipe, at the
    pick's place. A rung whose runs span invocations under different limits is read as one under the last."""
    setting = setting or current_setting(study)
    if setting is None:
        return []
    runs, _ = _run_list(study, setting, reference(study))
    pairs = {n: r["redirected"]["network_at"] for n, r in redirected(study, setting).items()}
    stages = stage_trials(study)
    order = []
    for t in runs:
        pair = pairs.get(t.number)
        stage = stages.get((pair["network_of"], pair["recipe_of"])) if pair else None
        order.append(t.number if stage is None else stage.number)
    return list(dict.fromkeys(order))


def _train_promoted(study: optuna.Study, setting: RungSetting, claims: Claims,
                    splits: Mapping[int, tuple[Split, Split]], device: torch.device, final_schedule: str,
                    say: Callable[[str], None], skip_done: bool = False,
                    gate: Callable[[optuna.trial.FrozenTrial], str | None] | None = None) -> float:
    spent, ref = 0.0, reference(study)
    runs, redirect = _run_list(study, setting, ref)
    limit = study.user_attrs.get(MINUTES_ATTR)
    for trial in runs:
        if trial.number in finished(study, setting):
            if not skip_done:
                skipped = "skipped" in _records(study, setting).get(trial.number, {})
                say(f"rung 2: trial {trial.number} " + ("not trained under this time budget (a new --time-budget "
                                                        "may train it)" if skipped else "already done at this setting"))
            continue
        claim = _take(claims, trial, setting, say)
        if claim is None:
            continue
        if redirect and searched(trial) and recipe_params(trial.params) != recipe_params(ref.params):
            def train_reference() -> None:  # its process died: trained here, as one process would have
                nonlocal spent
                ref_claim = _take(claims, ref, setting, say)
                if ref_claim is not None:
                    spent += _train_one(study, setting, claims, ref_claim, ref, splits, device, final_schedule, say,
                                        is_ref=True)
            stage = _redirect(study, setting, claims, claim, trial, ref, limit, final_schedule, say, train_reference)
            if stage is not None:  # its claim released: the pairing's run trains instead
                if stage.number in finished(study, setting):
                    continue
                trial, claim = stage, _take(claims, stage, setting, say)
                if claim is None:
                    continue
        reason = gate(trial) if gate is not None else None
        if reason is not None:  # done under this budget: the rung finishes without it
            study.set_user_attr(f"{RUNG_ATTR}:{trial.number}:{setting.id}", {
                "skipped": reason, "proxy_f": trial.value, **dataclasses.asdict(setting),
                "budget_started": (study.user_attrs.get(BUDGET_ATTR) or {}).get("started")})
            claims.release(claim, TrialState.FAIL)
            say(f"rung 2: trial {name_of(trial)} not trained: {reason}")
            continue
        spent += _train_one(study, setting, claims, claim, trial, splits, device, final_schedule, say,
                            is_ref=ref is not None and trial.number == ref.number)
    return spent


def _take(claims: Claims, trial: optuna.trial.FrozenTrial, setting: RungSetting, say: Callable[[str], None]
          ) -> int | None:
    """This process's claim on `trial`'s run at `setting`, or None (said) when it is done or another process's."""
    claim = claims.take(f"{RUNG_ATTR}:{trial.number}:{setting.id}")
    if claim is None:
        say(f"rung 2: trial {trial.number} is done or being trained by another process: skipped here")
    return claim


def _redirect(study: optuna.Study, setting: RungSetting, claims: Claims, claim: int, trial: optuna.trial.FrozenTrial,
              ref: optuna.trial.FrozenTrial, limit: float, final_schedule: str, say: Callable[[str], None],
              train_reference: Callable[[], object] | None = None) -> optuna.trial.FrozenTrial | None:
    """When `trial`'s final is foretold over `limit` from its proxy speed: its network's pairing with the reference's
    recipe (added to the study), its record `redirected` and its claim released; else None, the claim kept."""
    try:
        with claims.beating(claim):  # a wait may be long: the claim stays live
            ref_record = reference_record(study, setting, claims, ref, say, train_reference)
        minutes = proxy_minutes(trial, ref, ref_record) if ref_record else None
        if minutes is None or minutes <= limit:
            return None
        pairing = pairing_of(trial, ref)
        stage = add_stage_trial(study, setting, pairing)  # first: a kill before the record loses nothing
        study.set_user_attr(f"{RUNG_ATTR}:{trial.number}:{setting.id}", {
            "redirected": {"predicted_minutes": minutes, "network_at": pairing[STAGE_ATTR]},  # unrounded: finished()
            # compares this very figure with the limit
            "proxy_f": trial.value, **dataclasses.asdict(setting), "reference": False,
            "final_schedule": final_schedule})
    except BaseException:
        claims.release(claim, TrialState.FAIL)
        raise
    claims.release(claim, TrialState.FAIL)  # no run of its own was done: a raised limit can train it later
    say(f"rung 2: trial {name_of(trial)}: its final predicted at {over_text(minutes, limit)} min from its proxy "
        f"speed > --final-minutes {limit:g}: its network at the reference's recipe instead, trial {stage.number}")
    return stage


def redirect_notes(study: optuna.Study, setting: RungSetting | None = None) -> list[str]:
    """One line per pick the rung redirected to the reference's recipe (the summary's and the report's)."""
    stages, limit = stage_trials(study), study.user_attrs.get(MINUTES_ATTR)
    notes = []
    for n, r in sorted(redirected(study, setting).items()):
        pair = r["redirected"]["network_at"]
        stage = stages.get((pair["network_of"], pair["recipe_of"]))
        notes.append(f"{name_of(study.trials[n])}: proxy F {proxy_text(r['proxy_f'])}, its final foretold at "
                     f"{over_text(r['redirected']['predicted_minutes'], limit)} min from its proxy speed: not trained "
                     f"at its own "
                     f"recipe; its network at the reference's is " + (f"#{stage.number}" if stage else
                                                                        "still to be trained"))
    return notes


def _train_one(study: optuna.Study, setting: RungSetting, claims: Claims, claim: int,
               trial: optuna.trial.FrozenTrial, splits: Mapping[int, tuple[Split, Split]], device: torch.device,
               final_schedule: str, say: Callable[[str], None], is_ref: bool) -> float:
    """Train one claimed rung run and record it (a NaN loss or an out-of-memory as a failed attempt); returns the
    seconds it trained."""
    key = f"{RUNG_ATTR}:{trial.number}:{setting.id}"
    try:
        with claims.beating(claim):
            found = train_at(trial, splits, setting.schedule, setting.seed, device, desc=f"rung 2 #{trial.number}")
    except FAILURES as e:
        attempts = _records(study, setting).get(trial.number, {}).get("attempts", 0) + 1
        study.set_user_attr(key, {"failed": f"{type(e).__name__}: {e}"[:300], "attempts": attempts,
                                  "proxy_f": trial.value, **dataclasses.asdict(setting)})
        claims.release(claim, TrialState.FAIL)
        say(f"rung 2: trial {trial.number} failed ({type(e).__name__}: {e}); attempt {attempts} of "
            f"{MAX_ATTEMPTS}" + (", retried by the next run" if attempts < MAX_ATTEMPTS else ", left out"))
        return 0.0
    except BaseException:
        claims.release(claim, TrialState.FAIL)  # interrupted: a later run claims it again
        raise
    record = {"f": found[setting.signal], **found, "proxy_f": trial.value, **dataclasses.asdict(setting),
              "reference": is_ref, "final_schedule": final_schedule,
              "final_minutes": final_minutes(found, final_schedule)}
    study.set_user_attr(key, record)
    claims.release(claim, TrialState.COMPLETE, record["f"])
    say(f"rung 2: trial {name_of(trial)}{' (the reference)' if is_ref else ''}: proxy F "
        f"{proxy_text(trial.value)} -> rung-2 F {record['f']:.4f} ({found['seconds']:.0f} s; train.final "
        f"predicted {record['final_minutes'] or float('nan'):.0f} min at {final_schedule})")
    return found["seconds"]
