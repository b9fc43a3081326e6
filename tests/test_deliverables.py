"""The challenge's last deliverables (issue 23): report.pdf from train.final, and the ONNX export."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, run_main

A4 = (595.28, 841.89)  # points


def _body(pdf_path: Path) -> tuple[int, list[tuple[float, float]], Counter, str]:
    import pdfplumber

    with pdfplumber.open(pdf_path) as pdf:
        sizes = [(round(p.width, 2), round(p.height, 2)) for p in pdf.pages]
        chars = [c for p in pdf.pages for c in p.chars if c["text"].strip()]
        text = "\n".join(p.extract_text() for p in pdf.pages)
    fonts = Counter((c["fontname"].split("+")[-1], round(c["size"], 1)) for c in chars)
    return len(sizes), sizes, fonts, text


def test_report_pdf_is_a4_five_pages_at_most_in_arial_or_liberation_sans_10pt(final_run):
    pages, sizes, fonts, text = _body(final_run / "report.pdf")
    assert 1 <= pages <= 5 and all(s == A4 for s in sizes), sizes
    (font, size), _ = fonts.most_common(1)[0]  # the body text: most of the characters
    assert size == 10 and font.replace(" ", "").startswith(("LiberationSans", "Arial")), fonts.most_common(3)
    assert not font.startswith("LiberationSansNarrow")
    record = json.loads((final_run / "final.json").read_text())
    ckpt = torch.load(final_run / "ckpt.pth", weights_only=True)
    assert f"{record['params']:,} trainable parameters" in text and record["params"] == ckpt["params"]
    assert f"{record['val_f']:.4f}" in text and "Test-phase F-measure" in text
    for heading in ("Model", "Loss functions", "Processing steps and training", "How the architecture was found",
                    "Validation results per class", "Training curve"):
        assert heading in text
    assert "Hand-designed" in text and "soft Dice" in text and "32 px x 1 epochs" in text
    assert "ms per image" in text and all(f"{r['val_f']:.4f}" in text for r in record["predict_settings"])
    predicts = " + ".join(str(v) for v in record["predict_sizes"])
    assert f"at its training size 32 px (it predicts at {predicts} px" in " ".join(text.split())


def test_report_pdf_is_rebuilt_from_the_folder_and_refuses_without_a_font(final_run, tmp_path, monkeypatch):
    before = (final_run / "report.pdf").read_bytes()
    (final_run / "report.pdf").unlink()
    res = run_cli("train.report_pdf", str(final_run))
    assert res.returncode == 0 and (final_run / "report.pdf").exists(), res.stderr
    assert len((final_run / "report.pdf").read_bytes()) == pytest.approx(len(before), rel=0.05)
    bad = run_main("train.report_pdf", str(tmp_path))
    assert bad.returncode == 2 and "final.json missing" in bad.stderr and "Traceback" not in bad.stderr
    import train.report_pdf as report_pdf

    with pytest.raises(report_pdf.ReportError, match="apt-get install fonts-liberation"):
        report_pdf.find_font(dirs=(tmp_path,))


def test_export_agrees_with_pytorch_and_reports_latency(final_run, tiny_data, tmp_path):
    onnx_path = tmp_path / "model.onnx"
    res = run_cli("train.export", "--weights", str(final_run / "ckpt.pth"), "--out", str(onnx_path), "--data",
                  str(tiny_data), "--repeats", "2", "--threads", "1")
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    share = float(res.stdout.split("agreement with PyTorch: ")[1].split("%")[0])
    assert share >= 99.9 and "input 1x3x32x32" in res.stdout
    assert "on a 1x3x512x512 tensor (no flip TTA), median of 2 runs, 1 thread(s): PyTorch" in res.stdout
    # an ONNX file whose weights were changed must fail the same check
    import onnx
    from onnx import numpy_helper

    model = onnx.load(onnx_path)
    rng = np.random.default_rng(0)
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.ndim == 4:
            init.CopyFrom(numpy_helper.from_array(rng.permutation(array.ravel()).reshape(array.shape), init.name))
    bad = tmp_path / "perturbed.onnx"
    onnx.save(model, bad)
    res = run_cli("train.export", "--weights", str(final_run / "ckpt.pth"), "--check", str(bad), "--data",
                  str(tiny_data))
    assert res.returncode == 1 and "of pixels agree (need 99.9%)" in res.stderr, res.stdout + res.stderr


def test_export_refuses_a_checkpoint_holding_code(tmp_path):
    class Code:
        def __reduce__(self):
            return (os.getcwd, ())

    torch.save({"config": Code(), "state_dict": {}, "size": 32}, tmp_path / "code.pth")
    res = run_main("train.export", "--weights", str(tmp_path / "code.pth"), "--out", str(tmp_path / "m.onnx"))
    assert res.returncode == 2 and "refused: it holds Python objects" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m.onnx").exists()


def test_dynamic_export_is_checked_at_other_sizes_and_refused_when_they_differ(final_run, tiny_data, tmp_path,
                                                                               monkeypatch, capsys):
    import train.export as export

    onnx_path = tmp_path / "dynamic.onnx"
    base = ["--weights", str(final_run / "ckpt.pth"), "--data", str(tiny_data), "--dynamic", "--repeats", "1",
            "--threads", "1"]
    assert export.main([*base, "--out", str(onnx_path)]) == 0
    assert "input 1x3xHxW (dynamic)" in capsys.readouterr().out and onnx_path.exists()
    tried = []
    real = export.agreement

    def differs_elsewhere(model, path, images, size, threads):  # a network whose padding baked in a size
        tried.append(size)
        return real(model, path, images, size, threads) if size == 32 else 0.9

    monkeypatch.setattr(export, "agreement", differs_elsewhere)
    refused = tmp_path / "refused.onnx"
    assert export.main([*base, "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch at 49x49 px (90.00% of pixels agree)" in err and "without --dynamic" in err
    assert tried == [49] and not refused.exists() and not refused.with_name("refused.onnx.tmp").exists()


def test_rerunning_a_finished_final_keeps_its_record_valid(final_run, tiny_data, tmp_path):
    """The same command again on a finished run: nothing to train, and final.json stays strict JSON with the raw
    weights' F the run measured (it was NaN, not JSON), report.md says it too."""
    import shutil

    out = tmp_path / "final"
    shutil.copytree(final_run, out)
    before = json.loads((final_run / "final.json").read_text())
    res = run_cli("train.final", "--preset", "dw_unet", "--data", str(tiny_data), "--size", "32", "--epochs", "1",
                  "--device", "cpu", "--out", str(out))
    assert res.returncode == 0, res.stderr[-3000:]

    def refuse(constant):
        raise ValueError(f"{constant} in final.json")

    after = json.loads((out / "final.json").read_text(), parse_constant=refuse)
    assert after["val_f_raw"] == before["val_f_raw"] is not None and after["val_f"] == before["val_f"]
    assert "nan" not in (out / "report.md").read_text().lower()


def test_export_input_errors_are_one_line_with_exit_2(final_run, tiny_data, tmp_path, capsys):
    """What a user gets wrong exits 2 with a line naming it (exit 1 is kept for "disagrees with PyTorch")."""
    import train.export as export

    weights = ["--weights", str(final_run / "ckpt.pth"), "--data", str(tiny_data), "--threads", "1", "--repeats", "1"]
    fixed = tmp_path / "m.onnx"
    assert export.main([*weights, "--out", str(fixed)]) == 0  # fixed at the checkpoint's prediction size
    capsys.readouterr()
    size = export.onnx_size(fixed)
    (tmp_path / "folder").mkdir()
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    malformed = tmp_path / "malformed.pth"
    torch.save({"config": {"stages": "no"}, "state_dict": {}, "size": 32}, malformed)
    for argv, message in [
        ([*weights, "--check", str(junk)], f"--check {junk}: not an ONNX model onnxruntime can load"),
        ([*weights, "--images", "0"], "--images must be >= 1, got 0"),
        ([*weights, "--out", str(tmp_path / "missing" / "m.onnx")], f"folder {tmp_path / 'missing'} does not exist"),
        ([*weights, "--check", str(fixed), "--input-size", str(size + 32)],
         f"--input-size {size + 32}: {fixed} takes a fixed {size}x{size} px input"),
        ([*weights, "--out", str(tmp_path / "folder")], f"--out {tmp_path / 'folder'}: is a folder; give the ONNX"),
        (["--weights", str(malformed), "--out", str(tmp_path / "x.onnx")], f"{malformed}: its config does not"),
    ]:
        assert export.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert export.main([*weights, "--check", str(fixed)]) == 0  # the same file, checked as it is


def test_report_pdf_names_the_studys_own_sampler_and_pruner_and_rounds_the_proxy_f(final_run, tmp_path, monkeypatch):
    import shutil

    import matplotlib.figure

    import train.report_pdf as report_pdf

    out = tmp_path / "final"
    shutil.copytree(final_run, out)
    record = json.loads((out / "final.json").read_text())
    record["found_by"] = {"kind": "study", "study": "s", "trials": 9, "complete": 5, "pruned": 4,
                          "proxy": {"size": 64, "epochs": 4, "subset": 0.4, "signal": "mean_last2_f",
                                    "sampler": "random", "pruner": "median"},
                          "proxy_f": 0.123456789, "decided_by": "the proxy"}
    (out / "final.json").write_text(json.dumps(record))
    legend_sizes = []
    real_legend = matplotlib.figure.Figure.legend

    def legend(fig, *args, **kwargs):
        legend_sizes.append(kwargs.get("fontsize"))
        return real_legend(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "legend", legend)
    report_pdf.write_pdf(out)
    text = " ".join(_body(out / "report.pdf")[3].split())
    assert "random sampler with median pruning over the proxy's epochs" in text and "TPE" not in text
    assert "proxy F 0.1235)" in text and "0.123456789" not in text
    assert legend_sizes == [10]  # the curve's legend at the body's 10 pt (the figure is placed at about 1:1)
    del record["found_by"]["proxy"]["sampler"]  # a study from before it recorded them: said, not guessed
    (out / "final.json").write_text(json.dumps(record))
    report_pdf.write_pdf(out)
    assert "sampler and pruner not recorded" in " ".join(_body(out / "report.pdf")[3].split())


def _with_sizes(final_run: Path, folder: Path, sizes: list[int]) -> Path:
    ckpt = torch.load(final_run / "ckpt.pth", weights_only=False)
    ckpt["predict_sizes"] = sizes
    torch.save(ckpt, folder / "ckpt.pth")
    return folder / "ckpt.pth"


def test_onnx_json_describes_only_sizes_the_graph_takes(final_run, tiny_data, tmp_path, capsys):
    """Issue 37 item 8: a fixed 64-px graph of a checkpoint predicting at 32 px said "resize to each size (32), run
    the graph", which that graph cannot take; a checkpoint averaging two sizes got a fixed graph of the first."""
    import train.export as export

    weights = _with_sizes(final_run, tmp_path, [32])
    common = ["--data", str(tiny_data), "--threads", "1", "--repeats", "1"]
    fixed = tmp_path / "fixed64.onnx"
    assert export.main(["--weights", str(weights), "--out", str(fixed), "--input-size", "64", *common]) == 0
    setting = json.loads(fixed.with_name("fixed64.onnx.json").read_text())
    assert setting["graph_size"] == 64 and setting["predict_sizes"] == [64] and export.onnx_size(fixed) == 64
    assert "resize the image to 64x64" in setting["how"] and "predicts at 32 px" in setting["note"]
    two = _with_sizes(final_run, tmp_path, [32, 40])
    both = tmp_path / "both.onnx"
    assert export.main(["--weights", str(two), "--out", str(both), *common]) == 0
    assert "input 1x3xHxW (dynamic)" in capsys.readouterr().out and export.onnx_size(both) is None
    setting = json.loads(both.with_name("both.onnx.json").read_text())
    assert setting["graph_size"] == "dynamic" and setting["predict_sizes"] == [32, 40] and "note" not in setting


def test_export_moves_nothing_into_place_before_the_agreement_check(final_run, tiny_data, tmp_path, monkeypatch,
                                                                    capsys):
    import train.export as export

    monkeypatch.setattr(export, "agreement", lambda *args: 0.5)  # a graph that computes something else
    target = tmp_path / "model.onnx"
    assert export.main(["--weights", str(final_run / "ckpt.pth"), "--out", str(target), "--data", str(tiny_data),
                        "--threads", "1", "--repeats", "1"]) == 1
    assert "only 50.0000% of pixels agree" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no model.onnx, no .tmp, no .json
