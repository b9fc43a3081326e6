"""Full-fidelity records of a study, as `analysis.fidelity` writes them and `train.final`'s report reads them:
one study user attr per trial (or preset) and full setting, so parallel writers never overwrite each other and a
new setting never overwrites the figures of another."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from dataclasses import dataclass

import optuna

# Study user attrs written by `analysis.fidelity`, one per trial and full-fidelity setting (parallel writers never
# overwrite each other; a new setting never overwrites the figures of another):
ATTR = "full_fidelity"  # f"{ATTR}:{trial}:{setting id}" -> {"f", "seconds", **FullSetting}
VARIANT_ATTR = "proxy_variant"  # f"{VARIANT_ATTR}:{variant}:{trial}" -> {signal: value, "seconds": s}
HAND_ATTR = "hand_recipe"  # f"{HAND_ATTR}:{preset}:{setting id}" -> {"f", ...}: a preset at its own (hand) recipe


@dataclass(frozen=True)
class FullSetting:
    """What a full-fidelity F depends on besides the network: the inputs `train.final` checks before resuming."""

    schedule: str  # train.schedule format: "128:20", "128:24,256:12"
    seed: int
    ema: float
    data: str  # the data folder, resolved

    @property
    def id(self) -> str:
        return hashlib.sha1(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:10]

    def describe(self) -> str:
        return f"{self.schedule} seed {self.seed} EMA {self.ema:g}"


def record_key(prefix: str, item: int | str, setting: FullSetting) -> str:
    return f"{prefix}:{item}:{setting.id}"


def full_records(study: optuna.Study, prefix: str = ATTR) -> list[tuple[str, FullSetting, dict]]:
    """(trial number or preset name, setting, record) for every full-fidelity record of the study. Records from
    before settings were keyed (`full_fidelity:<trial>`, the older single dict `full_fidelity`) hold size and
    epochs: they read as the one-stage schedule SIZE:EPOCHS on the study's data folder."""
    attrs, out = study.user_attrs, []
    legacy = {f"{prefix}:{n}": v for n, v in (attrs.get(prefix) or {}).items()}
    for key, value in {**legacy, **attrs}.items():
        if not key.startswith(prefix + ":"):
            continue
        item = key.split(":")[1]
        schedule = value.get("schedule") or (f"{value['size']}:{value['epochs']}" if "size" in value else "unknown")
        setting = FullSetting(schedule, int(value.get("seed", 0)), float(value.get("ema", 0.99)),
                              value.get("data") or str(attrs.get("data", "")))
        out.append((item, setting, value))
    return out


def full_settings(study: optuna.Study) -> list[tuple[FullSetting, int]]:
    """Each full-fidelity setting recorded on the study's trials and how many trials it holds, most first."""
    counts = Counter(setting for _, setting, _ in full_records(study))
    return counts.most_common()


def recorded(study: optuna.Study, setting: FullSetting | None = None) -> dict[int, float]:
    """Trial number -> full-fidelity F at `setting` (default: the setting with the most trials recorded)."""
    if setting is None:
        settings = full_settings(study)
        if not settings:
            return {}
        setting = settings[0][0]
    return {int(item): value["f"] for item, s, value in full_records(study) if s == setting}


def seed_spreads(study: optuna.Study, setting: FullSetting) -> dict[int, dict[int, float]]:
    """Trial number -> {seed: full F} for the trials recorded at more than one seed under `setting`'s schedule,
    EMA and data: the seed noise that a proxy's ordering of close pairs is read against."""
    by_trial: dict[int, dict[int, float]] = {}
    for item, s, value in full_records(study):
        if dataclasses.replace(s, seed=setting.seed) == setting:
            by_trial.setdefault(int(item), {})[s.seed] = value["f"]
    return {n: seeds for n, seeds in sorted(by_trial.items()) if len(seeds) > 1}


def hand_recipe_results(study: optuna.Study, setting: FullSetting | None = None) -> dict[str, float]:
    """Preset name -> full F at its own hand recipe, as `analysis.fidelity --hand-recipe` stored it (at `setting`,
    default the study's most recorded full setting)."""
    if setting is None:
        settings = full_settings(study)
        setting = settings[0][0] if settings else None
    return {item: value["f"] for item, s, value in full_records(study, HAND_ATTR) if setting is None or s == setting}


def recipe_and_architecture(study: optuna.Study) -> list[tuple[str, float, str]]:
    """(row, full F, what the step to it buys) for a study searched at a fixed recipe: the best preset at its
    hand recipe, the same preset at the study's recipe (the recipe's share), the best portfolio entry that is not a
    preset and the best searched architecture at the study's recipe (each named as what it is: the architecture's
    share). Rows whose runs were not recorded are left out."""
    settings = full_settings(study)
    if not settings:
        return []
    setting = settings[0][0]
    full = recorded(study, setting)
    by_number = {t.number: t for t in study.trials}
    presets = {by_number[n].user_attrs["preset"]: f for n, f in full.items()
               if n in by_number and "preset" in by_number[n].user_attrs}
    entries = {n: f for n, f in full.items() if n in by_number and "portfolio" in by_number[n].user_attrs
               and "preset" not in by_number[n].user_attrs}  # known-good networks found by earlier searches
    searched = {n: f for n, f in full.items() if n in by_number and not {"preset", "portfolio", "recipe_stage"}
                & set(by_number[n].user_attrs)}
    rows: list[tuple[str, float, str]] = []
    if not presets or not study.user_attrs.get("fixed"):
        return rows
    name, at_recipe = max(presets.items(), key=lambda kv: kv[1])
    hand = hand_recipe_results(study, setting).get(name)
    if hand is not None:
        rows.append((f"preset {name} at its hand recipe", hand, ""))
    rows.append((f"preset {name} at the study's recipe", at_recipe,
                 "" if hand is None else f"recipe: {at_recipe - hand:+.4f}"))
    if entries:
        number, best = max(entries.items(), key=lambda kv: kv[1])
        rows.append((f"portfolio entry {by_number[number].user_attrs['portfolio']} (#{number}) at the study's recipe",
                     best, f"architecture: {best - at_recipe:+.4f}"))
    if searched:
        number, best = max(searched.items(), key=lambda kv: kv[1])
        rows.append((f"searched #{number} at the study's recipe", best, f"architecture: {best - at_recipe:+.4f}"))
    return rows


def variant_results(study: optuna.Study) -> dict[str, dict[int, dict]]:
    """Proxy variant name -> trial number -> its signals, as `analysis.fidelity --proxy` stored them."""
    out: dict[str, dict[int, dict]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(VARIANT_ATTR + ":"):
            _, variant, number = key.split(":")
            out.setdefault(variant, {})[int(number)] = value
    return out
