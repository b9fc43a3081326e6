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
