from __future__ import annotations

import optuna
import pytest
import torch

from space.budget import count_params, count_params_built
from space.config import BUDGET, ArchConfig
from space.network import build_model
from space.presets import PRESETS
from space.sample import sample_config

optuna.logging.set_verbosity(optuna.logging.WARNING)


def random_configs(n: int, seed: int = 0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        arch, loss, train = sample_config(trial)
        study.tell(trial, 0.0)
        yield trial, arch, loss, train


def exported_params(arch: ArchConfig) -> int:
    return sum(p.numel() for p in build_model(arch).drop_aux().parameters())


def test_2000_random_configs_under_budget_and_counts_exact():
    over, checked = 0, 0
    for i, (trial, arch, _, _) in enumerate(random_configs(2000)):
        params = trial.user_attrs["params"]
        over += params >= BUDGET
        assert params == count_params(arch)
        if i % 20 == 0:
            assert exported_params(arch) == params == count_params_built(arch)
            checked += 1
    assert over == 0 and checked == 100


def test_forward_backward_50_configs():
    for _, arch, _, _ in random_configs(50, seed=1):
        model = build_model(arch).train()
        x = torch.randn(2, 3, 64, 64)
        out = model(x)
        main = out[0] if isinstance(out, tuple) else out
        assert main.shape == (2, 19, 64, 64)
        loss = main.square().mean() + (out[1].square().mean() if isinstance(out, tuple) else 0)
        loss.backward()
        assert torch.isfinite(main).all()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()
                   if p.requires_grad)


def test_odd_input_sizes_are_padded():
    _, arch, _, _ = next(random_configs(1, seed=4))
    model = build_model(arch).eval()
    assert model(torch.randn(1, 3, 45, 70)).shape == (1, 19, 45, 70)


def test_fixed_trial_replay_and_json_round_trip():
    for trial, arch, loss, train in random_configs(20, seed=2):
        frozen = optuna.trial.FixedTrial(trial.params)
        arch2, loss2, train2 = sample_config(frozen)
        assert (arch2, loss2, train2) == (arch, loss, train)
        assert frozen.user_attrs["params"] == trial.user_attrs["params"]
        assert ArchConfig.from_json(arch.to_json()) == arch


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_within_10_percent_below_budget(name):
    trial = optuna.trial.FixedTrial(PRESETS[name])
    arch, _, _ = sample_config(trial)
    params = exported_params(arch)
    assert 0.9 * BUDGET <= params < BUDGET


def test_bad_config_values_are_named():
    with pytest.raises(ValueError, match="output_stride=12"):
        ArchConfig(stages=next(random_configs(1))[1].stages, output_stride=12)


@pytest.mark.parametrize("skip2,resolution", [(False, 16), (True, 32)])
def test_skip2_moves_the_head_to_half_resolution(skip2, resolution):
    params = dict(PRESETS["deeplab_lite"], skip2=skip2)
    arch, _, _ = sample_config(optuna.trial.FixedTrial(params))
    model = build_model(arch).eval()
    seen = []
    model.head.register_forward_hook(lambda m, i, o: seen.append(o.shape[-1]))
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 19, 64, 64)
    assert seen == [resolution]  # 1/4 of 64 without the step, 1/2 with it
    assert count_params(arch) == count_params_built(arch) < BUDGET


def test_the_probe_finds_every_parameter_and_range_of_the_space():
    """`space_distributions` samples the conditional space PROBE_TRIALS times; 400 more draws find nothing new."""
    from space.sample import space_distributions

    probe = space_distributions()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=123))
    for _ in range(400):
        trial = study.ask()
        sample_config(trial)
        for name, dist in trial.distributions.items():
            assert name in probe and dist in probe[name], (name, dist)
