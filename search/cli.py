"""`python -m search.run`'s command line, built group by group, and the checks on its values that need no storage
(docs/search.md has what each setting does in detail)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from search.plan import parse_duration
from search.storage import DEFAULT_STORAGE, HEARTBEAT_S, is_sqlite
from train.cli import parser
from train.schedule import MAX_EPOCHS, MAX_SIZE, MIN_SIZE, ScheduleError, parse_schedule

DOC = "`python -m search.run --trials 100`: the architecture search (proxy trials, then the second rung)."
EPILOG = ("A trial whose loss becomes NaN/inf or that runs out of memory is marked FAIL and the search goes on; any "
          "other exception is a bug and ends the run with its traceback (finished trials stay in the study). "
          "Re-running the same command resumes the study. Details: docs/search.md.")
DEFAULT_TRIALS = 100  # --trials without a time budget (with one, the budget decides)
UNLIMITED_TRIALS = 2**31 - 1  # "as many as the budget allows" (the workers share the count in a 32-bit value)
OVER_LIMIT_DEFAULT = "reference"  # search.rung's rule for picks foretold over --final-minutes (RungSetting.over_limit):
# on both CPU flow studies it shipped the same pick as "own" in 12 and 24 fewer rung minutes (docs/results.md)


def _data_and_storage(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--data", type=Path, default=None,
                   help="dataset root (challenge layout); default: a resumed study's own folder, else "
                        "data/celebamask-mini if present, else the embedded synthetic faces (generated once)")
    g.add_argument("--study", default=None, help="study name; default facenas-<data folder name>")
    g.add_argument("--storage", default=DEFAULT_STORAGE,
                   help="Optuna storage: sqlite:///FILE, postgresql+psycopg://..., or a plain path to a journal file")
    g.add_argument("--artifact-dir", type=Path, default=Path("studies/artifacts"),
                   help="where the trials' prediction grids are stored")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")


def _proxy(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--trials", type=int, default=None,
                   help=f"proxy trials to run in this invocation, a maximum (default {DEFAULT_TRIALS}; under a time "
                        "budget, given or resumed, as many as it allows); 0 = none, only the second rung")
    g.add_argument("--proxy-size", type=int, default=None, help="proxy resolution in px (default 64 CPU, 256 CUDA)")
    g.add_argument("--proxy-epochs", type=int, default=None, help="epochs per proxy trial (default 4 CPU, 12 CUDA)")
    g.add_argument("--subset", type=float, default=None,
                   help="share of train the proxies use (default 0.4 CPU, 1.0 CUDA)")
    g.add_argument("--signal", choices=("last_f", "mean_last2_f"), default=None,
                   help="what a complete proxy reports: the last val F or the mean of the last two (default "
                        "mean_last2_f CPU, last_f CUDA)")
    g.add_argument("--seed", type=int, default=None,
                   help="seed of the sampler and of proxy training (default 0; a resumed study keeps its own)")
    g.add_argument("--flops-cap", type=float, default=None,
                   help="draw again any network costing more FLOPs than this multiple of the costliest preset (0 = "
                        "no cap; default 1.0 CPU, 0 CUDA)")
    g.add_argument("--fix", action="append", default=[], metavar="NAME=VALUE",
                   help="hold one parameter of the space at a value (repeatable), e.g. --fix batch_size=8")
    g.add_argument("--recipe-from", default=None, metavar="STUDY[:TRIAL]",
                   help="hold the recipe (loss and optimiser params) at a trial's of another study in this storage, "
                        "so only architectures are searched")
    g.add_argument("--portfolio", type=Path, default=None, metavar="FILE",
                   help="a JSON list of known-good entries ({name, params}) a new study starts from, instead of the "
                        "built-in portfolio (space/portfolio.py)")


def _sampler(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sampler", choices=("tpe", "random"), default=None,
                   help="Optuna sampler (default tpe; a resumed study keeps its own)")
    g.add_argument("--pruner", choices=("hyperband", "median", "none"), default=None,
                   help="Optuna pruner, stepped per proxy epoch (default hyperband; a resumed study keeps its own)")


def _rung(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--rung", type=int, default=None, metavar="K",
                   help="train the top K proxy trials, the reference and the recipe stage again at --rung-size; "
                        "train.final --study best takes the best (0 = off; default 3 CPU, 0 CUDA)")
    g.add_argument("--rung-size", default=None, metavar="SIZE:EPOCHS[,...]",
                   help="the second rung's resolution schedule (default 128:4,256:2 CPU)")
    g.add_argument("--rung-subset", type=float, default=None,
                   help="share of train the second rung uses (default 1.0)")
    g.add_argument("--over-limit-recipe", choices=("own", "reference"), default=None,
                   help="a pick foretold over --final-minutes trains at the rung at its own recipe, or its network "
                        f"at the reference's (default {OVER_LIMIT_DEFAULT}; a resumed study keeps its last rung's)")


def _time(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--time-budget", default=None, metavar="DURATION",
                   help="wall-clock time of the whole flow on this machine, this search and train.final --study best "
                        "together (3h, 150m, 5400s): the search stops in time and plans the final (docs/search.md)")
    g.add_argument("--final-minutes", type=float, default=None, metavar="M",
                   help="leave out of the rung's choice any pick whose train.final is predicted over M minutes "
                        "(default 40 CPU, off CUDA; inf = off; a resumed study keeps its own)")
    g.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="stop starting new proxy trials after this many seconds")


def _parallel(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--workers", type=int, default=1,
                   help="search processes sharing the study (a journal file or PostgreSQL, not SQLite; "
                        "docs/parallel.md)")
    g.add_argument("--heartbeat", type=float, default=HEARTBEAT_S,
                   help="seconds between heartbeats of a running trial on an RDB storage; a trial silent for 3 "
                        "beats is failed and retried once")


GROUPS = (("data and storage", _data_and_storage), ("proxy trials", _proxy), ("sampler and pruner", _sampler),
          ("second rung", _rung), ("time", _time), ("parallel", _parallel))


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m search.run", DOC, epilog=EPILOG)
    for title, add in GROUPS:
        add(p.add_argument_group(title))
    return p


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _in(name: str, value: float | None, low: float, high: float, what: str) -> None:
    if value is not None and not (low <= value <= high):  # NaN fails both comparisons: refused
        raise ValueError(f"--{name} must be {what}, got {value}")


def validate(args: argparse.Namespace) -> None:
    """Refuse, with one line naming the flag, values that make no sense (negative, NaN, infinite where not meant,
    out of range); nothing is opened or created before."""
    _in("trials", args.trials, 0, math.inf, ">= 0 (0 = only the second rung)")
    _in("trials", args.trials, 0, UNLIMITED_TRIALS, f"at most {UNLIMITED_TRIALS} (the workers share the count)")
    _in("workers", args.workers, 1, 1024, "1..1024")
    if args.workers > 1 and is_sqlite(args.storage):
        raise ValueError("SQLite is unsafe for parallel writers: with --workers > 1 use a journal file "
                         "(--storage studies/facenas.journal) or PostgreSQL (--storage postgresql+psycopg://...)")
    _in("subset", args.subset, 1e-9, 1, "in (0, 1]")
    _in("rung-subset", args.rung_subset, 1e-9, 1, "in (0, 1]")
    _in("proxy-size", args.proxy_size, MIN_SIZE, MAX_SIZE, f"{MIN_SIZE}..{MAX_SIZE}")
    _in("proxy-epochs", args.proxy_epochs, 1, MAX_EPOCHS, f"1..{MAX_EPOCHS}")
    _in("flops-cap", args.flops_cap, 0, 1e6, "a finite number >= 0 (0 = no cap)")
    _in("heartbeat", args.heartbeat, 1e-3, 86400, "in (0, 86400] seconds")
    _in("timeout", args.timeout, 1e-3, 1e9, "> 0 seconds (finite)")
    _in("rung", args.rung, 0, math.inf, ">= 0 (0 = off)")
    _in("seed", args.seed, 0, 2**32 - 1, f"0..{2**32 - 1}")
    if args.time_budget is not None:
        parse_duration(args.time_budget)
        if args.final_minutes is not None:
            raise ValueError("--final-minutes with --time-budget: the budget's plan sets the final's minutes; give one")
    if args.final_minutes is not None and not (args.final_minutes > 0):  # inf is meant: the limit off
        raise ValueError(f"--final-minutes must be > 0 minutes (inf = no limit), got {args.final_minutes}")
    if args.rung_size is not None:
        try:
            parse_schedule(args.rung_size)
        except ScheduleError as e:
            raise ValueError(f"--rung-size {args.rung_size}: {e}") from None
