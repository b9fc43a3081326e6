"""The search space: `sample_config(trial)` is the only place with `trial.suggest_*`.

The trial samples the network's *shape* (stages, blocks, depths, width ratios, context, decoder) and a target
share of the budget; the absolute width is then derived, not sampled: the largest width multiplier whose exact
parameter count stays at or under the target (bisection on `count_params`). No trial is ever over budget, and
replaying `optuna.trial.FixedTrial(trial.params)` rebuilds the identical network.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import optuna
from optuna.distributions import BaseDistribution
from optuna.trial import TrialState

from space.budget import count_flops, count_params, utilisation
from space.config import BUDGET, ArchConfig, LossConfig, StageConfig, TrainConfig
from space.network import make_divisible

ASPP_RATES = ("1-2-3", "2-4-6", "3-6-9", "4-8-12", "6-12-18")
BASE_WIDTH = 16
MULT_RANGE = (0.05, 12.0)
BISECT_STEPS = 18
# Parameters added to the space after studies were stored, with the value every earlier trial was trained
# with: replay fills them in for a trial whose params lack them (its network is the same as before)
ADDED_PARAMS = {"decoder_cbam": False, "rfs_threshold": 0.0}
PROBE_TRIALS = 64  # random samples that find every parameter of the (conditional) space; a test checks it
MAX_DRAWS = 2000  # proposals a trial may draw before InCapSampler gives up (a cap no network of the space meets)


class SpaceError(ValueError):
    """A parameter name or value the search space does not have, or a trial that no longer replays."""


def _shape(trial: optuna.trial.BaseTrial) -> dict:
    """Sample everything about the architecture except its absolute width."""
    n_stages = trial.suggest_int("n_stages", 4, 5)
    growth = trial.suggest_categorical("width_growth", [1.5, 1.75, 2.0])
    stages = []
    for i in range(n_stages):
        reduction = 2 ** (i + 1 + (n_stages == 4))  # 4-stage nets start at 1/4, 5-stage at 1/2
        block = trial.suggest_categorical(f"s{i}_block", ["res", "ir", "ds"])
        max_depth = 6 if reduction == 16 else (2 if reduction <= 4 else 4)
        stages.append(dict(
            ratio=growth ** max(0, i - (n_stages == 5)),
            depth=trial.suggest_int(f"s{i}_depth", 1, max_depth),
            block=block,
            expansion=trial.suggest_categorical(f"s{i}_expansion", [2, 3, 4, 6]) if block == "ir" else 4,
            kernel=trial.suggest_categorical(f"s{i}_kernel", [3, 5]),
            se=trial.suggest_categorical(f"s{i}_se", [False, True]),
        ))
    os_ = trial.suggest_categorical("output_stride", [8, 16])
    if os_ == 16:
        dilations = (trial.suggest_categorical("dilation_32", [1, 2, 4]),)
    else:
        dilations = (trial.suggest_categorical("dilation_16", [1, 2]),
                     trial.suggest_categorical("dilation_32", [1, 2, 4]))
    context = trial.suggest_categorical("context", ["aspp", "ppm", "none"])
    rates = trial.suggest_categorical("aspp_rates", ASPP_RATES) if context == "aspp" else "2-4-6"
    return dict(
        stages=stages, output_stride=os_, dilations=dilations, context=context,
        context_rates=tuple(int(r) for r in rates.split("-")),
        stem=trial.suggest_categorical("stem_width", [16, 24, 32]),
        context_width=trial.suggest_categorical("context_width", [64, 96, 128, 160]),
        skip4=trial.suggest_categorical("skip4", [True, False]),
        skip8=trial.suggest_categorical("skip8", [False, True]),
        skip2=trial.suggest_categorical("skip2", [False, True]),
        skip_width=trial.suggest_categorical("skip_width", [16, 24, 32, 48]),
        detail_width=trial.suggest_categorical("detail_width", [0, 32, 64]),
        decoder_width=trial.suggest_categorical("decoder_width", [32, 48, 64, 96]),
        decoder_depth=trial.suggest_int("decoder_depth", 1, 2),
        decoder_cbam=trial.suggest_categorical("decoder_cbam", [False, True]),
        activation=trial.suggest_categorical("activation", ["relu", "hardswish", "silu"]),
        aux_head=trial.suggest_categorical("aux_head", [False, True]),
    )


def realise(shape: dict, mult: float) -> ArchConfig:
    """The architecture of `shape` with every width scaled by `mult` (rounded to multiples of 8)."""
    w = lambda v: make_divisible(v * mult)
    stages = tuple(StageConfig(width=w(BASE_WIDTH * 2 * s["ratio"]), depth=s["depth"], block=s["block"],
                               expansion=s["expansion"], kernel=s["kernel"], se=s["se"]) for s in shape["stages"])
    return ArchConfig(
        stem_width=w(shape["stem"]), stages=stages, output_stride=shape["output_stride"],
        dilations=shape["dilations"], context=shape["context"], context_width=w(shape["context_width"]),
        context_rates=shape["context_rates"], skip4=shape["skip4"], skip8=shape["skip8"], skip2=shape["skip2"],
        skip_width=w(shape["skip_width"]), detail_width=w(shape["detail_width"]) if shape["detail_width"] else 0,
        decoder_width=w(shape["decoder_width"]), decoder_depth=shape["decoder_depth"],
        decoder_cbam=shape["decoder_cbam"], activation=shape["activation"], aux_head=shape["aux_head"])


def fit_width(shape: dict, target: int) -> tuple[ArchConfig, float]:
    """Largest multiplier (to bisection precision) whose network has at most `target` parameters.
    The count is non-decreasing in the multiplier, so bisection is exact about the bound."""
    lo, hi = MULT_RANGE
    best = realise(shape, lo)
    if count_params(best) > target:
        raise ValueError(f"even the narrowest network ({count_params(best)} params) exceeds {target}")
    if count_params(realise(shape, hi)) <= target:
        return realise(shape, hi), hi
    for _ in range(BISECT_STEPS):
        mid = (lo + hi) / 2
        cfg = realise(shape, mid)
        if count_params(cfg) <= target:
            lo, best = mid, cfg
        else:
            hi = mid
    return best, lo


def sample_loss(trial: optuna.trial.BaseTrial) -> LossConfig:
    focal = trial.suggest_categorical("loss_focal", [0.0, 0.5, 1.0])
    return LossConfig(
        ce=1.0,
        dice=trial.suggest_categorical("loss_dice", [0.0, 0.25, 0.5, 1.0]),
        focal=focal,
        focal_gamma=trial.suggest_categorical("focal_gamma", [1.0, 2.0, 3.0]) if focal else 2.0,
        lovasz=trial.suggest_categorical("loss_lovasz", [0.0, 0.25, 0.5]),
        boundary=trial.suggest_categorical("loss_boundary", [0.0, 0.5, 1.0]),
        class_weight_power=trial.suggest_categorical("class_weight_power", [0.0, 0.1, 0.25, 0.5]),
        label_smoothing=trial.suggest_categorical("label_smoothing", [0.0, 0.05, 0.1, 0.2]),
    )


def sample_train(trial: optuna.trial.BaseTrial) -> TrainConfig:
    """Optimiser settings. Augmentation strength is not sampled: a few-epoch proxy always prefers none (it only
    slows early learning), and the winner then overfits in the full schedule (measured: docs/results.md)."""
    optimizer = trial.suggest_categorical("optimizer", ["adamw", "sgd"])
    lr = (trial.suggest_float("lr_adamw", 5e-4, 1e-2, log=True) if optimizer == "adamw"
          else trial.suggest_float("lr_sgd", 5e-3, 1e-1, log=True))
    return TrainConfig(
        optimizer=optimizer, lr=lr,
        weight_decay=trial.suggest_float("weight_decay", 1e-5, 1e-2, log=True),
        warmup_frac=trial.suggest_categorical("warmup_frac", [0.0, 0.05, 0.1]),
        batch_size=trial.suggest_categorical("batch_size", [8, 16]),
        rfs_threshold=trial.suggest_categorical("rfs_threshold", [0.0, 0.1, 0.3]),
    )


def sample_config(trial: optuna.trial.BaseTrial) -> tuple[ArchConfig, LossConfig, TrainConfig]:
    """Sample (architecture, loss, recipe) for `trial`; the architecture is always under the budget."""
    shape = _shape(trial)
    fraction = trial.suggest_float("budget_fraction", 0.7, 0.99)
    target = min(int(fraction * BUDGET), BUDGET - 1)
    arch, mult = fit_width(shape, target)
    params = count_params(arch)
    assert params < BUDGET, (params, arch)
    trial.set_user_attr("params", params)
    trial.set_user_attr("utilisation", round(utilisation(params), 4))
    trial.set_user_attr("width_mult", round(mult, 4))
    return arch, sample_loss(trial), sample_train(trial)


@lru_cache(maxsize=1)
def space_distributions() -> dict[str, tuple[BaseDistribution, ...]]:
    """Every parameter name of the space with the distribution(s) it is sampled from. The space is conditional
    (an expansion ratio only for inverted-residual stages; a stage's depth range depends on the stage count),
    so it is found by sampling it: PROBE_TRIALS seeded random trials, deterministic."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        seen: dict[str, list[BaseDistribution]] = {}
        for _ in range(PROBE_TRIALS):
            trial = study.ask()
            sample_config(trial)
            for name, dist in trial.distributions.items():
                if dist not in seen.setdefault(name, []):
                    seen[name].append(dist)
    finally:
        optuna.logging.set_verbosity(level)
    return {name: tuple(dists) for name, dists in seen.items()}


def _contains(dist: BaseDistribution, value: object) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))
    except (ValueError, TypeError):
        return False


def _allowed(dists: tuple[BaseDistribution, ...]) -> str:
    parts = []
    for d in dists:
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            parts.append("one of " + ", ".join(map(str, d.choices)))
        else:
            parts.append(f"{d.low}..{d.high}")
    return " or ".join(dict.fromkeys(parts))


def check_params(values: dict, flag: str = "--fix") -> dict:
    """Refuse a name that is not a parameter of the space, or a value outside its range; returns `values`."""
    space = space_distributions()
    for name, value in values.items():
        if name not in space:
            raise SpaceError(f"{flag} {name}: not a parameter of the search space; its parameters: "
                             f"{', '.join(sorted(space))}")
        if not any(_contains(d, value) for d in space[name]):
            raise SpaceError(f"{flag} {name}={value!r}: outside the space; expected {_allowed(space[name])}")
    return values


def parse_assignments(items: list[str], flag: str) -> dict:
    """`NAME=VALUE` pairs (`--set`, `--fix`); values are read as JSON (numbers, true/false), else kept as text."""
    out = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise SpaceError(f"{flag} {item!r}: expected NAME=VALUE, e.g. {flag} class_weight_power=0.25")
        text = {"True": "true", "False": "false"}.get(text, text)
        try:
            out[name] = json.loads(text)
        except json.JSONDecodeError:
            out[name] = text
    return out


def recipe_params(params: dict) -> dict:
    """The loss and optimiser part of a trial's params (what `search.run --recipe-from` holds fixed)."""
    fixed = optuna.trial.FixedTrial({**ADDED_PARAMS, **params})
    sample_loss(fixed)
    sample_train(fixed)
    return dict(fixed.params)


def as_trial(params: dict, user_attrs: dict | None = None) -> optuna.trial.FrozenTrial:
    """A configuration that has no proxy score (a hand preset, the recipe stage's pairing of a network and a
    recipe) as a FAIL trial of an in-memory study: the space sampled with `params` fixed (parameters added to the
    space since they were written take their old value), so the trial holds the params it asks for, their
    distributions and the user attrs sampling sets, and replays as any searched trial. A parameter the space asks
    for that `params` lacks is an error, never a random draw."""
    params = {**ADDED_PARAMS, **params}
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(level)
    study.enqueue_trial(params, user_attrs=user_attrs)
    trial = study.ask()
    sample_config(trial)
    drawn = sorted(set(trial.params) - set(params))
    if drawn:
        raise SpaceError(f"the configuration lacks {', '.join(drawn)}: a parameter of the space it must name")
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # no proxy score: it was never trained there
    return study.trials[0]


def replay_params(params: dict) -> tuple[ArchConfig, LossConfig, TrainConfig]:
    """The configs of a params dict (parameters added to the space since it was written take their old value)."""
    return sample_config(optuna.trial.FixedTrial({**ADDED_PARAMS, **params}))


class InCapSampler(optuna.samplers.BaseSampler):
    """Hands every new trial a whole proposal drawn before the trial takes it, redrawn while its network costs more
    than `max_flops` at `size` px: as the parameter budget, the FLOPs cap is met by the space's sampling, so no
    trial exists for a network over it and every trial trains (a trial pruned before training gives TPE nothing to
    learn from).

    Each proposal is drawn by a fresh `make_base(seed)` sampler (TPE, random) on an in-memory copy of the study's
    trials (the RUNNING ones included, for TPE's constant liar), the rejected draws failed in the copy only. The
    seed comes from `seed` and the trial's number, so parallel workers never share a stream and a study replays.
    Enqueued trials (the portfolio, retries) keep their own params. `max_flops=None`: no cap, the same seeding.
    """

    def __init__(self, make_base: Callable[[int], optuna.samplers.BaseSampler], seed: int,
                 max_flops: float | None = None, size: int = 64, max_draws: int = MAX_DRAWS):
        self.make_base, self.seed, self.max_flops, self.size = make_base, seed, max_flops, size
        self.max_draws = max_draws
        self.last_redrawn = 0  # draws over the cap before the last proposal (never trials)
        self._proposal: dict = {}

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.last_redrawn = 0
        try:
            # an enqueued trial (the portfolio) or a retry of a killed one (its params kept) replays its own params
            own = "fixed_params" in trial.system_attrs or trial.params
            self._proposal = {} if own else self.propose(study, trial.number)
        except SpaceError as e:  # raised inside study.ask(): the trial it created would stay RUNNING for ever
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", str(e)[:500])
            study._storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            raise

    def propose(self, study: optuna.Study, number: int) -> dict:
        """The params of trial `number`: the first draw of its seeded sampler whose network is within the cap."""
        seed = int(np.random.SeedSequence([self.seed, number]).generate_state(1)[0])
        level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        try:
            scratch = optuna.create_study(directions=study.directions, sampler=self.make_base(seed))
            scratch.add_trials(t for t in study.get_trials(deepcopy=False)
                               if t.number != number and t.state != TrialState.WAITING)
            for _ in range(self.max_draws):
                draw = scratch.ask()
                arch = sample_config(draw)[0]
                if self.max_flops is None or count_flops(arch, self.size) <= self.max_flops:
                    return dict(draw.params)
                scratch.tell(draw, state=TrialState.FAIL)
                self.last_redrawn += 1
        finally:
            optuna.logging.set_verbosity(level)
        raise SpaceError(f"no network of the space within the FLOPs cap ({self.max_flops / 1e6:.0f} MFLOPs at "
                         f"{self.size} px) in {self.max_draws} draws: raise --flops-cap or change --fix")

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, name: str, distribution: BaseDistribution):
        if name not in self._proposal:  # an enqueued trial's params that its enqueue left out: the base decides
            seed = int(np.random.SeedSequence([self.seed, trial.number, 1]).generate_state(1)[0])
            return self.make_base(seed).sample_independent(study, trial, name, distribution)
        return self._proposal[name]


def replay(trial: optuna.trial.FrozenTrial, overrides: dict | None = None
           ) -> tuple[ArchConfig, LossConfig, TrainConfig]:
    """The trial's (architecture, loss, recipe), rebuilt from its params with `FixedTrial`, so that search and
    retraining cannot drift apart; `overrides` (`--set`) replace some params, checked against the space."""
    params = {**ADDED_PARAMS, **trial.params}
    fixed = optuna.trial.FixedTrial(params)
    arch, loss_cfg, train_cfg = sample_config(fixed)
    stored = trial.user_attrs.get("params")
    if stored is not None and stored != fixed.user_attrs["params"]:
        raise SpaceError(f"trial {trial.number} replays to {fixed.user_attrs['params']} params, but the study "
                         f"recorded {stored}: the search space changed since the search")
    if not overrides:
        return arch, loss_cfg, train_cfg
    fixed = optuna.trial.FixedTrial({**params, **overrides})
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # FixedTrial only warns about values outside the space
            arch, loss_cfg, train_cfg = sample_config(fixed)
    except (ValueError, UserWarning) as e:
        raise SpaceError(f"--set {overrides}: {e}") from None
    unused = sorted(set(overrides) - set(fixed.params))
    if unused:
        raise SpaceError(f"--set {', '.join(unused)}: not a parameter of this trial; its parameters: "
                         f"{', '.join(sorted(fixed.params))}")
    return arch, loss_cfg, train_cfg
