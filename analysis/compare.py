"""`python -m analysis.compare --runs dw_unet=RUN,RUN --runs t28=RUN,RUN`: where networks differ, class by class.

Each RUN is a `train.final` output folder. Its per-class val F comes from its final.json (runs since commit
282f433 write it), or else from scoring its ckpt.pth on the val split of the data folder it trained on, exactly as
`train.final` scored it (the exported EMA weights, logits upsampled to the native mask size, no flip TTA). Prints
one markdown table: the val F of each group (the mean over its runs), then each class's mean per-image F over the
val images that hold it, per group, and each group's difference to the first group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from train.classes import CLASS_NAMES
from train.cli import parser
from train.data import load_split
from train.infer import load_checkpoint, pick_device, safe_load
from train.loop import evaluate


class CompareError(ValueError):
    pass


def run_scores(folder: Path, data: Path | None = None) -> tuple[float, list[float | None], list[int]]:
    """(val F, per-class F with None where val has no image of the class, images per class) of one run."""
    summary = folder / "final.json"
    if not summary.is_file():
        raise CompareError(f"{folder}: not a finished train.final output folder (final.json expected)")
    record = json.loads(summary.read_text())
    rows = record.get("per_class")
    if rows is None:  # older runs: score the exported checkpoint again, as train.final did
        if data is None:
            last = folder / "last.pth"
            recorded = safe_load(last).get("data") if last.is_file() else None
            if recorded is None:
                raise CompareError(f"{folder}: its final.json has no per-class figures and no last.pth names the data "
                                   f"folder it trained on: give --data ROOT to score it again")
            data = Path(recorded)
        device = pick_device("cpu")
        model, _ = load_checkpoint(folder / "ckpt.pth", device)  # train.final's val F is at the training size
        size = int(safe_load(folder / "ckpt.pth")["size"])
        scorer = evaluate(model, load_split(data, "val", size=size, keep_full_masks=True), device)
        rows = scorer.per_class_rows()
        record["val_f"] = scorer.f_measure
    return float(record["val_f"]), [r["f"] for r in rows], [r["images"] for r in rows]


def mean(values: list[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def table(groups: dict[str, list[tuple[float, list[float | None], list[int]]]]) -> str:
    names = list(groups)
    first = names[0]
    head = ["class", "val images"] + [f"{n} ({len(groups[n])} runs)" for n in names]
    head += [f"{n} - {first}" for n in names[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def row(label: str, count: str, values: list[float | None]) -> str:
        cells = [label, count] + ["-" if v is None else f"{v:.4f}" for v in values]
        cells += ["-" if v is None or values[0] is None else f"{v - values[0]:+.4f}" for v in values[1:]]
        return "| " + " | ".join(cells) + " |"

    lines.append(row("**val F**", "", [mean([r[0] for r in groups[n]]) for n in names]))
    counts = groups[first][0][2]
    for c, name in enumerate(CLASS_NAMES):
        lines.append(row(f"{c} {name}", str(counts[c]), [mean([r[1][c] for r in groups[n]]) for n in names]))
    return "\n".join(lines)


def parse_group(text: str) -> tuple[str, list[Path]]:
    name, sep, runs = text.partition("=")
    if not sep or not name or not runs:
        raise CompareError(f"--runs {text!r}: expected NAME=RUN[,RUN...], e.g. --runs dw_unet=runs/a,runs/b")
    return name, [Path(r) for r in runs.split(",")]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = parser("python -m analysis.compare", __doc__, epilog="Details: docs/analysis.md.")
    g = p.add_argument_group("runs")
    g.add_argument("--runs", action="append", required=True, metavar="NAME=RUN[,RUN...]",
                   help="a group of train.final output folders (e.g. one network's seeds), repeatable; the first "
                        "group is the one the others are compared to")
    g.add_argument("--data", type=Path, default=None,
                   help="dataset root for runs that must be scored again (default: the folder each run trained on)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        parsed = [parse_group(g) for g in args.runs]
        names = [name for name, _ in parsed]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise CompareError(f"--runs: the group name {', '.join(map(repr, twice))} is given twice; give each group "
                               f"its own name (or list all its runs after one NAME=)")
        groups = dict(parsed)
        scores = {name: [run_scores(f, args.data) for f in folders] for name, folders in groups.items()}
    except (ValueError, OSError) as e:  # CompareError, DataError and bad checkpoints are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
