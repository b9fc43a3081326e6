"""The portfolio: known-good (network, recipe) pairs, as trial params, with the figures that make them known-good.

Every new study starts from them (`search.run` enqueues them before its first proposal, as auto-sklearn and
Auto-PyTorch start from a portfolio and SMAC puts the default into its initial design), they are never pruned (a
known-good entry is not judged at the lowest fidelity alone: PriorBand, Mallik et al. 2023, weighs the expert prior
most at the high fidelities), and the best of them by proxy F is trained at the second rung beside the proxy's top
K (the reference), so that the search ships a searched network only when it beat the reference there.

The presets enter at R85, the recipe that the earlier searches found and that wins at full fidelity on all of
them (docs/results.md); at their own hand recipe they lose on every network measured, so they are not entries.
`search.run --portfolio FILE` replaces this list with a JSON list of entries of the same fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from space.presets import PRESETS
from space.sample import SpaceError, check_params, replay_params

# Recipe R85 (docs/results-archive.md, the 128-px tier): the dw_unet preset's recipe with trial #85's five changes
R85 = dict(loss_focal=0.0, loss_dice=1.0, loss_lovasz=0.0, loss_boundary=0.0, class_weight_power=0.25,
           label_smoothing=0.0, optimizer="adamw", lr_adamw=0.009106449283846203, weight_decay=0.0015032023117292972,
           warmup_frac=0.05, batch_size=8, rfs_threshold=0.0)

# arch-tpe #28 (docs/studies/arch-r85.journal): dw_unet's family with SiLU, SE in the first stage, one more block
# in the last stage and a wider 1x1 context
_T28 = {**{k: v for k, v in PRESETS["dw_unet"].items() if k not in R85},
        "s0_se": True, "s4_depth": 4, "context_width": 96, "activation": "silu",
        "budget_fraction": 0.9580893818900055}


@dataclass(frozen=True)
class Entry:
    """One known-good configuration: its trial params, the val F it reached and the docs/results.md row it is
    from."""

    name: str
    params: dict
    val_f: float | None = None  # val F at the CPU default final (128:24,256:12), as the source row gives it
    source: str = ""
    preset: str | None = None  # the hand-designed preset whose network it is (analysis tells them apart)


PORTFOLIO: tuple[Entry, ...] = (
    Entry("arch-tpe#28@R85", {**_T28, **R85}, 0.8187,
          "docs/results.md, 'Searched vs hand design at the CPU default final': arch-tpe #28, "
          "two-seed mean (0.8173 / 0.8201)"),
    Entry("dw_unet@R85", {**PRESETS["dw_unet"], **R85}, 0.8145,
          "docs/results.md, 'The CPU final's resolution schedule': 128:24,256:12, two-seed mean "
          "(0.8159 / 0.8131)", preset="dw_unet"),
    Entry("deeplab_lite@R85", {**PRESETS["deeplab_lite"], **R85}, 0.8009,
          "docs/results.md, 'Proxy fidelity against the CPU final, and the second rung': #0, seed 0",
          preset="deeplab_lite"),
    Entry("bisenet_style@R85", {**PRESETS["bisenet_style"], **R85}, 0.7891,
          "docs/results.md, 'Proxy fidelity against the CPU final, and the second rung': #1, seed 0",
          preset="bisenet_style"),
)


def check_entry(entry: Entry, where: str) -> Entry:
    """Refuse an entry whose params are not a whole, in-range point of the space (names the entry and `where`)."""
    try:
        check_params(entry.params, "")
        replay_params(entry.params)
    except (SpaceError, ValueError) as e:
        raise SpaceError(f"{where}: entry {entry.name!r}: {str(e).strip()}") from None
    return entry


def load_portfolio(path: Path) -> tuple[Entry, ...]:
    """A portfolio from a JSON list of {"name", "params", optional "val_f", "source", "preset"}; every entry is
    checked against the space."""
    try:
        items = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SpaceError(f"--portfolio {path}: not a readable JSON file ({e})") from None
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise SpaceError(f"--portfolio {path}: expected a non-empty JSON list of entries "
                         f'{{"name": ..., "params": {{...}}}}')
    entries, names = [], set()
    for i, item in enumerate(items):
        unknown = set(item) - {"name", "params", "val_f", "source", "preset"}
        if "name" not in item or "params" not in item or unknown:
            raise SpaceError(f"--portfolio {path}: entry {i} needs 'name' and 'params' (optional 'val_f', 'source', "
                             f"'preset'){'; unknown: ' + ', '.join(sorted(unknown)) if unknown else ''}")
        if not isinstance(item["params"], dict):
            raise SpaceError(f"--portfolio {path}: entry {item['name']!r}: 'params' must be a JSON object of "
                             f"parameter values, got {type(item['params']).__name__}")
        if item["name"] in names:
            raise SpaceError(f"--portfolio {path}: two entries are named {item['name']!r}")
        names.add(item["name"])
        entries.append(check_entry(Entry(str(item["name"]), dict(item["params"]), item.get("val_f"),
                                         str(item.get("source", "")), item.get("preset")), f"--portfolio {path}"))
    return tuple(entries)

