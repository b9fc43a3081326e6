"""The prediction setting (issue 29, item 1): chosen on val by train.final, stored in the checkpoint, honoured by
every predictor; a checkpoint without it predicts at its training size as before."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli
from PIL import Image

from space.network import build_model
from space.presets import PRESETS
from space.sample import sample_config
from train.imageops import resize_image
from train.infer import load_checkpoint, load_rgb, predict_logits, predict_mask
from train.scale import TIE, Row, candidates, pick

CPU = torch.device("cpu")


def test_candidates_around_the_training_size_and_the_tie_rule():
    assert candidates(256) == [(256,), (224,), (288,), (320,), (256, 320)]
    assert candidates(512) == [(512,), (448,), (576,), (640,), (512, 640)]
    rows = [Row((256,), 0.8000, 1.0), Row((224,), 0.7900, 1.0), Row((288,), 0.8000 + TIE, 1.0),
            Row((256, 320), 0.8000 + TIE / 2, 2.0)]
    assert pick(rows, (256,)) == (256,)  # a gain of TIE or less keeps the training size
    rows[2].val_f = 0.8000 + 2 * TIE
    assert pick(rows, (256,)) == (288,)
    rows[3].val_f = 0.8100
    assert pick(rows, (256,)) == (256, 320)


def _model() -> torch.nn.Module:
    """A dw_unet whose labels change with the input size: random weights, a classifier scaled up so that its
    argmax follows the features (a freshly initialised head predicts one class everywhere)."""
    arch = sample_config(optuna.trial.FixedTrial(PRESETS["dw_unet"]))[0]
    torch.manual_seed(0)
    model = build_model(arch).drop_aux().eval()
    head = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 19][-1]
    with torch.no_grad():
        head.weight.normal_(0, 1.0)
        if head.bias is not None:
            head.bias.zero_()
    return model


def _checkpoint(path: Path, predict_sizes: tuple[int, ...] | None) -> torch.nn.Module:
    from train.final import export_checkpoint

    model = _model()
    export_checkpoint(model, model.cfg, 32, path, predict_sizes=predict_sizes)
    if predict_sizes is None:  # a checkpoint written before the setting existed
        ckpt = torch.load(path, weights_only=True)
        del ckpt["predict_sizes"]
        torch.save(ckpt, path)
    return model


def test_two_sizes_average_their_logits_at_the_image_size(tiny_data):
    model = _model()
    image = load_rgb(sorted((tiny_data / "test" / "images").iterdir())[0])
    h, w = image.shape[:2]
    logits = [F.interpolate(predict_logits(model, resize_image(image, s)[None], CPU), (h, w), mode="bilinear",
                            align_corners=False)[0] for s in (32, 40)]
    expected = (logits[0] + logits[1]).argmax(0).numpy()
    both = predict_mask(model, image, (32, 40), CPU)
    assert np.array_equal(both, expected)
    assert not np.array_equal(both, predict_mask(model, image, 32, CPU))
    assert not np.array_equal(both, predict_mask(model, image, 40, CPU))


@pytest.mark.parametrize("stored", [(40,), None], ids=["setting 40 px", "old checkpoint"])
def test_predict_and_the_shipped_run_py_honour_the_checkpoints_setting(tiny_data, tmp_path, stored):
    from train.solution import write_solution

    ckpt = tmp_path / "ckpt.pth"
    model = _checkpoint(ckpt, stored)
    sizes = stored or (32,)  # an old checkpoint predicts at its training size, as before
    assert load_checkpoint(ckpt, CPU)[1] == sizes
    images = sorted((tiny_data / "test" / "images").iterdir())
    expected = {p.stem: predict_mask(model, load_rgb(p), sizes, CPU, flip_tta=True) for p in images}
    other = (32,) if stored else (40,)
    assert any(not np.array_equal(expected[p.stem], predict_mask(model, load_rgb(p), other, CPU, flip_tta=True))
               for p in images)  # the setting matters for these images: a predictor that ignores it is caught
    pred = run_cli("train.predict", "--weights", str(ckpt), "--input", str(images[0].parent),
                   "--out", str(tmp_path / "p"), "--device", "cpu")
    assert pred.returncode == 0, pred.stderr[-2000:]
    solution = write_solution(tmp_path / "solution", ckpt)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "run.py", "--input", str(images[0].parent), "--output", str(tmp_path / "r"),
                          "--weights", "ckpt.pth", "--device", "cpu"], cwd=solution, env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    for p in images:
        assert np.array_equal(np.asarray(Image.open(tmp_path / "p" / f"{p.stem}.png")), expected[p.stem])
        assert np.array_equal(np.asarray(Image.open(tmp_path / "r" / f"{p.stem}.png")), expected[p.stem])


def test_export_builds_the_graph_at_the_setting_and_writes_it_beside(tiny_data, tmp_path, capsys):
    """Through train.export's entry point in this process (one interpreter for the three exports)."""
    pytest.importorskip("onnxruntime")
    from train.export import main, onnx_size

    def export(*args: str) -> str:
        assert main(["--weights", str(ckpt), "--data", str(tiny_data), "--images", "2", "--repeats", "1", *args]) == 0
        return capsys.readouterr().out

    ckpt = tmp_path / "ckpt.pth"
    _checkpoint(ckpt, (40,))
    out = export("--out", str(tmp_path / "m.onnx"))
    assert onnx_size(tmp_path / "m.onnx") == 40 and "predicts at 40 px" in out
    assert json.loads((tmp_path / "m.onnx.json").read_text())["predict_sizes"] == [40]
    _checkpoint(ckpt, (32, 40))  # two sizes: one dynamic graph takes both
    out = export("--out", str(tmp_path / "two.onnx"))
    assert onnx_size(tmp_path / "two.onnx") is None and "predicts at 32 + 40 px" in out
    assert json.loads((tmp_path / "two.onnx.json").read_text())["predict_sizes"] == [32, 40]
    out = export("--out", str(tmp_path / "one.onnx"), "--input-size", "32")
    assert onnx_size(tmp_path / "one.onnx") == 32 and "this graph takes 32 px only" in out
    assert json.loads((tmp_path / "one.onnx.json").read_text())["predict_sizes"] == [32]
