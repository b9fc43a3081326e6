"""`python -m bench.ladder_rows runs/ladder [--write]`: the schedule ladder's rows from its finished runs
(bench/ladder.sh), as a docs/results.md table and, with --write, as the rows of search/ladders/cpu.json.

For each schedule with finished seeds: val F per seed (without TTA, as train.final reports it), the F of the
prediction setting the final chose (flip TTA), the minutes `bench.schedule` predicts alone on two threads (from the
per-size seconds the ladder file records), the side-by-side wall time, and the after-training minutes (what
train.final does after its last epoch), scaled from side by side to alone by the run's predicted over its measured
training time. Time a run spent stopped for other measurements (runs/ladder/pauses.txt) is left out; a wall time
marked ~ is estimated (a run stopped by a restart: see wall_seconds).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from bench.schedule import scorings
from train.cli import parser
from train.schedule import parse_schedule

LADDER = Path(__file__).resolve().parents[1] / "search" / "ladders" / "cpu.json"
SECTION = "docs/results.md, 'The final's schedule ladder'"


def predicted_minutes(schedule: str, seconds: dict) -> float:
    """bench.schedule's prediction from per-size {epoch_s, score_s, decode_s}."""
    stages = parse_schedule(schedule)
    cost = {int(k): v for k, v in seconds.items()}
    total = sum(cost[s.size]["epoch_s"] * s.epochs for s in stages)
    total += sum(cost[size]["score_s"] * n for size, n in scorings(stages).items())
    total += sum(cost[size]["decode_s"] for size in {s.size for s in stages})
    return total / 60


def wall_seconds(run: Path, fit_seconds: float | None) -> tuple[float | None, bool]:
    """The run's wall time and whether it is estimated. Timed in full, it is the sum of the `wall N s` lines
    /usr/bin/time wrote (one per invocation: resumes add). When an invocation was stopped before it could write its
    line (the machine restarted), the last invocation's after-training time (its wall less the training it did: the
    cumulative `seconds` of history.csv less those at its resume, `resuming ... at epoch N/` naming the epochs already
    finished) is added to the whole run's training seconds."""
    log = run / "log"
    text = log.read_text() if log.exists() else ""
    walls = [float(v) for v in re.findall(r"^wall ([0-9.]+) s$", text, flags=re.M)]
    if len(re.findall(r"^training: ", text, flags=re.M)) <= len(walls):
        return sum(walls) or None, False
    resumed = re.findall(r"^resuming from .* at epoch (\d+)/", text.rsplit("\ntraining: ", 1)[-1], flags=re.M)
    if not walls or not fit_seconds or not resumed or not (run / "history.csv").exists():
        return None, True
    before = {int(row.split(",")[0]): float(row.split(",")[4])
              for row in (run / "history.csv").read_text().splitlines()[1:] if row}
    trained = fit_seconds - before.get(int(resumed[-1]), 0.0)
    return fit_seconds + walls[-1] - trained, True


def paused_seconds(folder: Path, run: Path) -> float:
    """Seconds the run spent stopped (SIGSTOP) while other measurements had the cores: the overlap of its start and
    end (queue.log) with the intervals in pauses.txt ("paused START..END ...", ISO times)."""
    from datetime import datetime

    stamp = lambda text: datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    queue = (folder / "queue.log").read_text() if (folder / "queue.log").exists() else ""
    start = re.search(rf"^start: \S*{re.escape(run.name)} \((\S+)\)", queue, flags=re.M)
    end = re.search(rf"^end: \S*{re.escape(run.name)} \((\S+)\)", queue, flags=re.M)
    pauses = (folder / "pauses.txt").read_text() if (folder / "pauses.txt").exists() else ""
    if not start or not end:
        return 0.0
    a, b = stamp(start.group(1)), stamp(end.group(1))
    return sum(max(0.0, min(b, stamp(y)) - max(a, stamp(x)))
               for x, y in re.findall(r"^paused (\S+)\.\.(\S+)", pauses, flags=re.M))


def rows(folder: Path, seconds: dict) -> list[dict]:
    runs: dict[str, dict[int, dict]] = {}
    for final in sorted(folder.glob("*/final.json")):
        record = json.loads(final.read_text())
        pause = paused_seconds(folder, final.parent)
        wall, estimated = wall_seconds(final.parent, record["fit_seconds"])
        runs.setdefault(record["schedule"], {})[record["seed"]] = {
            **record, "wall_s": wall and wall - pause, "estimated": estimated, "fit_seconds": record["fit_seconds"]
            and record["fit_seconds"] - pause}
    out = []
    for schedule, seeds in runs.items():
        predicted = predicted_minutes(schedule, seconds)
        after = []
        for r in seeds.values():
            if r["wall_s"] and r["fit_seconds"]:
                after.append((r["wall_s"] - r["fit_seconds"]) / 60 * predicted / (r["fit_seconds"] / 60))
        chosen = {s: next((p["val_f"] for p in r["predict_settings"] if p["sizes"] == r["predict_sizes"]), None)
                  for s, r in seeds.items()}
        out.append({"schedule": schedule, "seeds": sorted(seeds), "val_f": [round(seeds[s]["val_f"], 5) for s in
                                                                            sorted(seeds)],
                    "chosen_f": [chosen[s] and round(chosen[s], 4) for s in sorted(seeds)],
                    "predict_sizes": [seeds[s]["predict_sizes"] for s in sorted(seeds)],
                    "minutes": round(predicted, 1), "after_minutes": round(max(after), 1) if after else None,
                    "wall_min": [seeds[s]["wall_s"] and ("~" if seeds[s]["estimated"] else "") +
                                 str(round(seeds[s]["wall_s"] / 60)) for s in sorted(seeds)]})
    return sorted(out, key=lambda r: r["minutes"])


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m bench.ladder_rows", __doc__)
    g = p.add_argument_group("runs")
    g.add_argument("folder", type=Path, help="bench/ladder.sh's OUT folder")
    g.add_argument("--write", action="store_true", help="write the rows with both seeds into the CPU ladder file")
    args = p.parse_args(argv)
    ladder = json.loads(LADDER.read_text())
    found = rows(args.folder, ladder["seconds"])
    print("| schedule | val F by seed | mean | chosen setting's F (flip TTA) | predicted min | after-training min | "
          "wall side by side (min) |")
    print("|---|---|---|---|---|---|---|")
    for r in found:
        mean = sum(r["val_f"]) / len(r["val_f"])
        print(f"| {r['schedule']} | {' / '.join(f'{v:.4f}' for v in r['val_f'])} | {mean:.4f} | "
              f"{' / '.join('-' if v is None else f'{v:.4f}' for v in r['chosen_f'])} | {r['minutes']:.1f} | "
              f"{r['after_minutes']} | {' / '.join(str(w) for w in r['wall_min'])} |")
    if args.write:
        done = [r for r in found if r["seeds"] == [0, 1] and r["after_minutes"] is not None]
        kept = {r["schedule"]: r for r in ladder["rows"]}  # rows measured earlier stay until their re-run lands
        kept.update({r["schedule"]: {"schedule": r["schedule"], "val_f": r["val_f"], "minutes": r["minutes"],
                                     "after_minutes": r["after_minutes"], "source": f"{SECTION}: {r['schedule']}"}
                     for r in done})
        ladder["rows"] = sorted(kept.values(), key=lambda r: r["minutes"])
        LADDER.write_text(json.dumps(ladder, indent=1) + "\n")
        print(f"wrote {len(done)} rows to {LADDER}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
