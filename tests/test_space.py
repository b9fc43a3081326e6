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


def test_decoder_cbam_follows_every_decoder_step_and_is_counted_exactly():
    """The space extension of issue 22: CBAM (channel, then spatial attention) after each decoder step."""
    from space.network import CBAM

    for name in sorted(PRESETS):
        plain, _, _ = sample_config(optuna.trial.FixedTrial(PRESETS[name]))
        arch, _, _ = sample_config(optuna.trial.FixedTrial(dict(PRESETS[name], decoder_cbam=True, skip2=True)))
        model = build_model(arch).eval()
        steps = len(model.decoder)
        gates = [m for m in model.modules() if isinstance(m, CBAM)]
        assert arch.decoder_cbam and len(gates) == steps >= 2
        assert not any(isinstance(m, CBAM) for m in build_model(plain).modules())
        assert count_params(arch) == count_params_built(arch) == exported_params(arch) < BUDGET
        seen: list[torch.Tensor] = []
        gates[-1].spatial.register_forward_hook(lambda m, i, o, seen=seen: seen.append(torch.sigmoid(o)))
        with torch.no_grad():
            assert model(torch.randn(1, 3, 64, 64)).shape == (1, 19, 64, 64)
        assert seen[0].shape == (1, 1, 32, 32) and 0 < seen[0].min() <= seen[0].max() < 1  # a map at 1/2


def test_trials_stored_before_a_parameter_was_added_replay_to_the_same_network():
    """docs/studies/arch-r85.journal predates decoder_cbam: its trials replay (to the parameter count the study
    recorded, or `replay` raises) without it, and a checkpoint config saved then compares equal to today's."""
    from pathlib import Path

    from search.storage import open_storage
    from space.sample import replay

    path = Path(__file__).resolve().parents[1] / "docs" / "studies" / "arch-r85.journal"
    study = optuna.load_study(study_name="arch-tpe", storage=open_storage(str(path), heartbeat=None))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) >= 8 and all("decoder_cbam" not in t.params for t in done)
    for t in done:
        arch, _, _ = replay(t)
        assert not arch.decoder_cbam and count_params(arch) == t.user_attrs["params"]
        old = {k: v for k, v in arch.to_dict().items() if k != "decoder_cbam"}
        assert ArchConfig.normalised(old) == arch.to_dict() != old


def test_as_trial_fills_added_params_and_refuses_a_missing_one():
    from space.sample import ADDED_PARAMS, SpaceError, as_trial

    params = {k: v for k, v in PRESETS["dw_unet"].items() if k not in ADDED_PARAMS}
    trial = as_trial(params, {"preset": "dw_unet"})
    assert trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs["preset"] == "dw_unet"
    assert {k: trial.params[k] for k in ADDED_PARAMS} == ADDED_PARAMS  # their old value, never a random draw
    with pytest.raises(SpaceError, match="lacks s1_depth"):
        as_trial({k: v for k, v in params.items() if k != "s1_depth"})
