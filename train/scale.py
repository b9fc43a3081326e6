"""The prediction setting of a trained model, chosen on val: the input size it predicts at, or two sizes whose
logits are averaged (one model's prediction, as flip TTA is).

`train.final` scores val at a few sizes around the last training size and at a two-scale average, and stores the
winner in the checkpoint (`predict_sizes`); every predictor reads it back through `train.infer.load_checkpoint`.
The training size keeps its place unless another setting beats it by more than `TIE` (a gain that small is within
what choosing on the same 100 images can produce by chance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from train.data import Split
from train.imageops import describe_sizes
from train.loop import evaluate_sizes
from train.schedule import MAX_SIZE, MIN_SIZE

SCALES = (0.875, 1.0, 1.125, 1.25)  # single sizes tried, as multiples of the last training size
TWO_SCALE = (1.0, 1.25)  # the two-scale average tried
TIE = 0.001  # a setting must beat the training size by more than this to replace it


def scaled(size: int, factor: float) -> int:
    """`size * factor` rounded to a multiple of 4 px (256 -> 224, 288, 320; 512 -> 448, 576, 640), within the
    sizes a schedule may have (32..1024 px, as --predict-sizes)."""
    return min(MAX_SIZE, max(MIN_SIZE, int(round(size * factor / 4)) * 4))


def candidates(size: int) -> list[tuple[int, ...]]:
    """The settings tried for a model trained last at `size`: the training size first, then the other single
    sizes, then the two-scale average (duplicates dropped)."""
    settings = [(size,)] + [(scaled(size, f),) for f in SCALES] + [tuple(scaled(size, f) for f in TWO_SCALE)]
    return list(dict.fromkeys(settings))


@dataclass
class Row:
    sizes: tuple[int, ...]
    val_f: float
    ms_per_image: float  # forward pass(es), upsampling and scoring of one val image, on the device used

    def to_dict(self) -> dict:
        return {"sizes": list(self.sizes), "val_f": self.val_f, "ms_per_image": self.ms_per_image}


def choose(model: torch.nn.Module, val_at: Callable[[int], Split], size: int, device: torch.device,
           flip_tta: bool, say: Callable[[str], None] = print) -> tuple[tuple[int, ...], list[Row]]:
    """(chosen sizes, one row per setting tried) for a model trained last at `size`; `val_at(s)` gives val resized
    to s with its full-resolution masks. Scored with flip TTA when the test masks are written with it."""
    rows, cache = [], {}
    for sizes in candidates(size):
        for s in sizes:
            if s not in cache:
                cache[s] = val_at(s)
        t0 = time.perf_counter()
        f = evaluate_sizes(model, cache, sizes, device, flip_tta).f_measure
        rows.append(Row(sizes, f, (time.perf_counter() - t0) * 1000 / len(cache[sizes[0]])))
        say(f"prediction setting {describe_sizes(sizes)}: val F {f:.4f}{' (flip TTA)' if flip_tta else ''}, "
            f"{rows[-1].ms_per_image:.0f} ms per image")
    return pick(rows, (size,)), rows


def pick(rows: list[Row], training: tuple[int, ...]) -> tuple[int, ...]:
    """The best row's sizes, unless it beats the training size's row by `TIE` or less."""
    base = next(r for r in rows if r.sizes == training)
    best = max(rows, key=lambda r: r.val_f)
    return best.sizes if round(best.val_f - base.val_f, 9) > TIE else base.sizes  # (rounded: 0.8 + TIE - 0.8 > TIE)


def table(rows: list[Row], chosen: tuple[int, ...], flip_tta: bool) -> str:
    """A markdown table of the settings tried, the chosen one marked."""
    lines = [f"| prediction setting | val F{' (flip TTA)' if flip_tta else ''} | ms per image | |", "|---|---|---|---|"]
    for r in rows:
        mark = "**chosen**" if r.sizes == chosen else ""
        lines.append(f"| {describe_sizes(r.sizes)} | {r.val_f:.4f} | {r.ms_per_image:.0f} | {mark} |")
    return "\n".join(lines)
