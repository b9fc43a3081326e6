"""One time budget for the whole flow (`search.run --time-budget 3h`): the search and `train.final --study best`
together, on this machine, by the wall clock.

The final's time is planned from the **schedule ladder** (`search/ladders/<device>.json`): `train.final` schedules of
the portfolio's best network measured for val F (two seeds) and predicted minutes, each row naming its
docs/results.md row. The rule fixed before the ladder was measured: for M minutes, the row with the highest two-seed
mean among those that fit in M, and the cheapest row within the ladder's seed spread of it (`choose_row`).

- **Up front** (`initial_plan`): the final's target is the rule's row for the time the smallest search leaves; the
  rung's runs are reserved at the ladder's figures (fewer promoted picks when the budget is short); what remains is
  the proxy phase's. A budget too small for the cheapest final is refused, saying the smallest that works.
- **Proxy trials** start only while one more fits before the proxy phase's end (FLAML's rule: the time left covers
  one more trial and the rest): `may_start_trial`, each worker before each trial, from the trials' own durations.
- **Rung runs** are reserved at the reference's rung run for the reference and at the ladder's pick rung run (the
  picks of the committed CPU flows trained 1.2x as long as the reference on average) for the others. One starts only
  when it ends before the final the plan protects must begin (`rung_gate`): the plan's target, or, when the time left
  no longer affords it, the row the time left affords now; a rung run costs the final a step of the ladder only when
  it overruns its estimate by more than half the margin.
  The rung's time limit for picks (`--final-minutes`) is the time the plan leaves for the final.
- **At the search's end** (`final_plan`): for every pick at the rung, the schedule its final gets in the minutes
  left, from the ladder's minutes scaled by the pick's own speed at the rung (its predicted minutes at the ladder's
  default row over that row's). The study records the plan (`PLAN_ATTR`); `train.final` follows it, and chooses
  among the picks by rung-2 F plus the ladder's gain of each one's planned schedule over the default row
  (`planned_gains`): a pick too slow for the longer rows competes on the schedule it can afford.

A resumed study keeps its budget (the same start and length: the wall clock runs on while nothing runs) unless
`--time-budget` is given again, which starts a new budget from then.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

LADDERS = Path(__file__).parent / "ladders"  # FACENAS_LADDERS names another folder (the tests' tiny ladders)
BUDGET_ATTR = "time_budget"  # study user attr: {"seconds", "started", "device", "proxy_until", "rung_k", ...}
PLAN_ATTR = "time_plan"  # study user attr: the plan at the search's end (train.final follows it)
MARGIN = 0.02  # share of the budget kept back for what the estimates miss (start-up, writes, a slow trial)
MIN_MARGIN_S = 30.0
SEARCHED_MIN = 10  # searched proxy trials the smallest search runs beside the portfolio (TPE's random start-up)
SEARCHED_PER_PICK = 5  # and this many more per pick the rung promotes


class PlanError(ValueError):
    """A budget that cannot be planned (too small, a ladder without figures), with a one-line reason."""


@dataclass(frozen=True)
class Row:
    schedule: str  # train.schedule format
    val_f: tuple[float, ...]  # one per seed (the rule needs two)
    minutes: float  # train.final's training and scoring, predicted alone on this machine's cores (bench.schedule)
    after_minutes: float  # what train.final does after training: the prediction setting, test masks, reports, zip
    source: str  # the docs/results.md row

    @property
    def mean(self) -> float:
        return sum(self.val_f) / len(self.val_f)

    @property
    def total(self) -> float:
        return self.minutes + self.after_minutes


@dataclass(frozen=True)
class Ladder:
    device: str
    network: str
    rows: tuple[Row, ...]
    default: str  # the device's default final schedule: the row a pick's speed is measured against
    rung_run_seconds: float  # one rung run of the ladder's network, alone (the reference's)
    proxy_trial_seconds: float  # one proxy trial of it, as the CPU flows ran them
    path: Path
    rung_pick_seconds: float | None = None  # one rung run of a pick (None: the reference's figure)

    @property
    def pick_run_seconds(self) -> float:
        return self.rung_pick_seconds or self.rung_run_seconds

    @property
    def spread(self) -> float:
        """The seed spread: the mean over the rows of (max - min) of their seeds' val F."""
        gaps = [max(r.val_f) - min(r.val_f) for r in self.rows if len(r.val_f) > 1]
        return sum(gaps) / len(gaps) if gaps else 0.0

    def row(self, schedule: str) -> Row | None:
        return next((r for r in self.rows if r.schedule == schedule), None)

    @property
    def default_row(self) -> Row:
        """The default schedule's row (the cheapest row when the default is not measured)."""
        return self.row(self.default) or min(self.rows, key=lambda r: r.total)


def load_ladder(device: str, path: Path | None = None) -> Ladder:
    """The ladder of a device kind ('cpu', 'cuda'); a PlanError names the file when it cannot plan (missing, or rows
    without measured figures)."""
    path = path or Path(os.environ.get("FACENAS_LADDERS") or LADDERS) / f"{device}.json"
    try:
        data = json.loads(Path(path).read_text())
        rows = tuple(Row(r["schedule"], tuple(r["val_f"] or ()), r["minutes"], r["after_minutes"], r["source"])
                     for r in data["rows"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise PlanError(f"schedule ladder {path}: not readable ({e})") from None
    measured = tuple(r for r in rows if r.val_f and r.minutes is not None and r.after_minutes is not None)
    if not measured or data.get("rung_run_seconds") is None or data.get("proxy_trial_seconds") is None:
        raise PlanError(f"--time-budget on {device}: the schedule ladder {path} has no measured rows yet "
                        f"({data.get('note', 'measure it first')})")
    return Ladder(device, data["network"], measured, data["default"], data["rung_run_seconds"],
                  data["proxy_trial_seconds"], Path(path), data.get("rung_pick_seconds"))


_UNITS = {"h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """'3h', '150m', '5400s', '1h30m' -> seconds; a ValueError naming the value otherwise."""
    parts = re.fullmatch(r"\s*((?:\d+(?:\.\d+)?\s*[hms]\s*)+)", text.lower())
    if not parts:
        raise ValueError(f"--time-budget {text!r}: expected a duration such as 3h, 150m, 5400s or 1h30m")
    seconds = sum(float(n) * _UNITS[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)\s*([hms])", parts.group(1)))
    if not 0 < seconds < 30 * 86400:
        raise ValueError(f"--time-budget {text!r}: expected more than 0 and under 30 days")
    return seconds


def say_minutes(seconds: float) -> str:
    """A duration as a person reads it: 95 s -> '1 min 35 s', 7380 s -> '2 h 03 min'."""
    seconds = max(0.0, seconds)
    if seconds >= 3600:
        return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"
    return f"{int(seconds // 60)} min {int(seconds % 60):02d} s" if seconds >= 60 else f"{seconds:.0f} s"


def choose_row(ladder: Ladder, minutes: float, factor: float = 1.0) -> Row | None:
    """The ladder's rule for `minutes` (a final's whole time, its after-training part included, with the ladder's
    minutes times `factor`, the pick's speed): among the rows that fit, the highest two-seed mean, then the cheapest
    row within the seed spread of it; None when none fits."""
    fits = [r for r in ladder.rows if r.total * factor <= minutes]
    if not fits:
        return None
    best = max(r.mean for r in fits)
    return min((r for r in fits if r.mean >= best - ladder.spread), key=lambda r: (r.total, -r.mean))


def margin(budget_s: float) -> float:
    return max(MIN_MARGIN_S, MARGIN * budget_s)


def proxy_minimum(ladder: Ladder, entries: int, k: int, workers: int = 1) -> float:
    """The smallest proxy phase worth a rung of `k` picks: the portfolio's entries and SEARCHED_MIN searched trials,
    SEARCHED_PER_PICK more per pick, at the ladder's seconds a trial, on `workers` processes."""
    trials = entries + SEARCHED_MIN + SEARCHED_PER_PICK * k
    return math.ceil(trials / max(1, workers)) * ladder.proxy_trial_seconds


def rung_reserve(ladder: Ladder, k: int) -> float:
    """The rung's seconds for `k` picks: the reference's run at its figure, the picks' and the recipe stage's at the
    pick figure (none without picks: the rung is off, and train.final retrains the proxy's best)."""
    return ladder.rung_run_seconds + (k + 1) * ladder.pick_run_seconds if k else 0.0


def initial_plan(ladder: Ladder, budget_s: float, entries: int, rung_k: int, workers: int = 1) -> dict:
    """The plan before any trial: the final's target row, the rung's promoted count and reserve, and when the proxy
    phase must end (seconds from the start). The rung promotes fewer picks (none at the least) when the budget is
    short; whatever it promotes, the proxy phase keeps at least `proxy_minimum` of searched trials."""
    for k in range(rung_k, -1, -1):
        rung_s = rung_reserve(ladder, k)
        room = budget_s - margin(budget_s) - rung_s - proxy_minimum(ladder, entries, k, workers)
        target = choose_row(ladder, room / 60)
        if target is not None:
            return {"rung_k": k, "rung_reserve_s": rung_s, "final_target": target.schedule,
                    "final_reserve_s": target.total * 60,
                    "proxy_until": budget_s - margin(budget_s) - rung_s - target.total * 60}
    cheapest = min(ladder.rows, key=lambda r: r.total)
    base = proxy_minimum(ladder, entries, 0, workers) + cheapest.total * 60
    smallest = base
    for _ in range(5):  # the margin grows with the budget
        smallest = base + margin(smallest)
    raise PlanError(f"--time-budget {say_minutes(budget_s)}: too small here: the portfolio and "
                    f"{SEARCHED_MIN} searched proxy trials, and the cheapest final ({cheapest.schedule}, about "
                    f"{cheapest.total:.0f} min, {ladder.path.name}), need about {say_minutes(smallest)}; give at least "
                    f"{math.ceil(smallest / 60)}m")


def trial_estimate(durations: list[float], ladder: Ladder) -> float:
    """What one more proxy trial takes: the 90th percentile of the trials finished so far (the ladder's figure before
    any)."""
    if not durations:
        return ladder.proxy_trial_seconds
    ordered = sorted(durations)
    return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def may_start_trial(budget: dict, durations: list[float], ladder: Ladder, now: float | None = None) -> bool:
    """FLAML's rule: one more proxy trial starts only when it ends before the proxy phase's end."""
    now = time.time() if now is None else now
    return now + trial_estimate(durations, ladder) <= budget["started"] + budget["proxy_until"]


def left_s(budget: dict, now: float | None = None) -> float:
    return budget["started"] + budget["seconds"] - (time.time() if now is None else now)


def rung_run_estimate(ladder: Ladder, ref_seconds: float | None, ref_ips: float | None, ips: float | None,
                      pick: bool = True) -> float:
    """One rung run's seconds: the reference's rung run (once it is done, else the ladder's) times the reference's
    proxy images/s over the pick's (as `search.rung.proxy_minutes` foretells a final); for a pick (not the reference
    itself), at least the ladder's pick rung run (the reference's without a pick figure), scaled as the reference's
    run here is to the ladder's. Proxy speed foretold the committed CPU flows' pick runs at 0.6x to 1.4x: the floor
    bounds the under-estimates."""
    base = ref_seconds or ladder.rung_run_seconds
    by_speed = base * ref_ips / ips if ref_ips and ips else base
    if not pick:
        return by_speed
    return max(by_speed, ladder.pick_run_seconds * base / ladder.rung_run_seconds)


def protected_row(budget: dict, ladder: Ladder, now: float | None = None) -> Row:
    """The final a rung run must leave time for: the plan's target (`final_target`), or the row `final_plan` would
    give the time left now when that is cheaper (the target is already out of reach); the cheapest row when neither
    is known (a ladder without the target's row) or nothing fits."""
    cheapest = min(ladder.rows, key=lambda r: r.total)
    target = ladder.row(budget.get("final_target") or "")
    now_row = choose_row(ladder, (left_s(budget, now) - margin(budget["seconds"]) / 2) / 60)
    if target is None or now_row is None:
        return cheapest
    return now_row if now_row.total < target.total else target


def rung_gate(budget: dict, ladder: Ladder, run_s: float, now: float | None = None) -> str | None:
    """Why a rung run of `run_s` seconds must not start (None: it may): it would end after the final the plan
    protects (`protected_row`) must begin, with the whole margin kept (`final_plan` plans from half of it: the other
    half absorbs a run that overruns its estimate)."""
    row = protected_row(budget, ladder, now)
    room = left_s(budget, now) - margin(budget["seconds"]) - row.total * 60
    if room < run_s:
        return (f"the time budget: it would take about {say_minutes(run_s)}, and {say_minutes(room)} remain before "
                f"the final ({row.schedule}, about {row.total:.0f} min) must start")
    return None


def final_plan(ladder: Ladder, budget: dict, picks: dict[int, float | None], now: float | None = None) -> dict:
    """The plan at the search's end: the minutes left and, for each pick at the rung (trial number -> its predicted
    minutes at the ladder's default schedule, None when unknown), the schedule the rule gives it in them."""
    left = left_s(budget, now) - margin(budget["seconds"]) / 2
    default = ladder.default_row
    schedules = {}
    for number, minutes in picks.items():
        factor = minutes / default.minutes if minutes else 1.0
        row = choose_row(ladder, left / 60, factor) or min(ladder.rows, key=lambda r: r.total)
        schedules[str(number)] = {"schedule": row.schedule, "minutes": round(row.total * factor, 1),
                                  "val_f_mean": round(row.mean, 4), "gain": row.mean - default.mean,
                                  "source": row.source}
    return {"minutes_left": round(max(0.0, left_s(budget, now)) / 60, 1), "planned_from": round(max(0.0, left) / 60, 1),
            "ladder": str(ladder.path.name), "schedules": schedules, "budget_started": budget["started"],
            "default": default.schedule}


def planned_gains(plan: dict, budget: dict | None) -> dict[int, float]:
    """Trial number -> what its planned schedule adds to val F over the ladder's default row (the ladder's two-seed
    means), for the pick choice under a time budget: a pick is judged by its rung-2 F plus this, so a slower pick
    that can only afford a cheaper schedule competes on what it would ship (unrounded: the ladder's seeds keep five
    decimals). Empty without a current plan (none, or one made under an earlier budget, or by a version that recorded
    no gains)."""
    entries = (plan or {}).get("schedules", {})
    if not made_under(plan, budget) or not all("gain" in e for e in entries.values()):
        return {}
    return {int(n): e["gain"] for n, e in entries.items()}


def made_under(plan: dict | None, budget: dict | None) -> bool:
    """Whether a recorded plan is the current budget's (a study searched again under a new --time-budget keeps its
    old plan until that search ends)."""
    return bool(plan) and bool(budget) and plan.get("budget_started") == budget.get("started")
