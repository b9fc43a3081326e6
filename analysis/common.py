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


def recorded(study: optuna.Study) -> dict[int, float]:
    """Trial number -> full-fidelity F stored in the study by `analysis.fidelity` (also the older single-dict
    form `full_fidelity` = {trial: {...}})."""
    attrs = study.user_attrs
    out = {int(n): v["f"] for n, v in (attrs.get(ATTR) or {}).items()}
    out.update({int(k.split(":")[1]): v["f"] for k, v in attrs.items() if k.startswith(ATTR + ":")})
    return out


def variant_results(study: optuna.Study) -> dict[str, dict[int, dict]]:
    """Proxy variant name -> trial number -> its signals, as `analysis.fidelity --proxy` stored them."""
    out: dict[str, dict[int, dict]] = {}
    for key, value in study.user_attrs.items():
        if key.startswith(VARIANT_ATTR + ":"):
            _, variant, number = key.split(":")
            out.setdefault(variant, {})[int(number)] = value
    return out
