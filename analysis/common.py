"""Small helpers shared by the analysis commands."""

from __future__ import annotations

import optuna
from scipy import stats


def complete_trials(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))


def rank_correlations(proxy: list[float], full: list[float]) -> tuple[float, float]:
    """(Kendall tau, Spearman rho) between proxy and full-fidelity scores; NaN when either side is constant
    (a ranking with all ties says nothing)."""
    if len(set(proxy)) < 2 or len(set(full)) < 2:
        return float("nan"), float("nan")
    return float(stats.kendalltau(proxy, full).statistic), float(stats.spearmanr(proxy, full).statistic)


# Study user attrs written by `analysis.fidelity`, one per trial (parallel writers never overwrite each other):
ATTR = "full_fidelity"  # f"{ATTR}:{trial}" -> {"f", "epochs", "size", "seed", "ema", "seconds"}
VARIANT_ATTR = "proxy_variant"  # f"{VARIANT_ATTR}:{variant}:{trial}" -> {signal: value, "seconds": s}
HAND_ATTR = "hand_recipe"  # f"{HAND_ATTR}:{preset}" -> {"f", ...}: a preset retrained at its own (hand) recipe


def recorded(study: optuna.Study) -> dict[int, float]:
    """Trial number -> full-fidelity F stored in the study by `analysis.fidelity` (also the older single-dict
    form `full_fidelity` = {trial: {...}})."""
    attrs = study.user_attrs
    out = {int(n): v["f"] for n, v in (attrs.get(ATTR) or {}).items()}
    out.update({int(k.split(":")[1]): v["f"] for k, v in attrs.items() if k.startswith(ATTR + ":")})
    return out


def hand_recipe_results(study: optuna.Study) -> dict[str, float]:
    """Preset name -> full F at its own hand recipe, as `analysis.fidelity --hand-recipe` stored it."""
    return {k.split(":", 1)[1]: v["f"] for k, v in study.user_attrs.items() if k.startswith(HAND_ATTR + ":")}


def recipe_and_architecture(study: optuna.Study) -> list[tuple[str, float, str]]:
    """(row, full F, what the step to it buys) for a study searched at a fixed recipe: the best preset at its
    hand recipe, the same preset at the study's recipe (the recipe's share), the best searched architecture at
    the study's recipe (the architecture's share). Rows whose runs were not recorded are left out."""
    full = recorded(study)
    by_number = {t.number: t for t in study.trials}
    presets = {by_number[n].user_attrs["preset"]: f for n, f in full.items()
               if n in by_number and "preset" in by_number[n].user_attrs}
    searched = {n: f for n, f in full.items() if n in by_number and "preset" not in by_number[n].user_attrs}
    rows: list[tuple[str, float, str]] = []
    if not presets or not study.user_attrs.get("fixed"):
        return rows
    name, at_recipe = max(presets.items(), key=lambda kv: kv[1])
    hand = hand_recipe_results(study).get(name)
    if hand is not None:
        rows.append((f"preset {name} at its hand recipe", hand, ""))
    rows.append((f"preset {name} at the study's recipe", at_recipe,
                 "" if hand is None else f"recipe: {at_recipe - hand:+.4f}"))
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
