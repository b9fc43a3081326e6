from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import urllib.request
from pathlib import Path
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
import optuna
import pytest
import torch
from conftest import StopAtFit, capture_initial_weights, run_cli, run_main
from PIL import Image

from analysis.common import rank_correlations
from analysis.fidelity import spread_across_ranking
from analysis.report import write_report
from search.records import (
    ATTR,
    HAND_ATTR,
    full_records,
    full_settings,
    hand_recipe_results,
    recipe_and_architecture,
    recorded,
    seed_spreads,
    variant_results,
)
from search.storage import open_storage
from space.presets import PRESETS
from space.sample import sample_config
from train.schedule import Stage

optuna.logging.set_verbosity(optuna.logging.WARNING)
SECTIONS = ("Optimization history", "Parameter importances", "F-measure vs parameters and FLOPs",
            "Per-class F of the top 10 trials", "Learning curves", "Pruning", "Proxy vs full fidelity")


def planted_study(storage: str, n: int = 20, full_f=lambda proxy: proxy, artifact=None) -> optuna.Study:
    """A study of real sampled configs with made-up scores (no training): some complete, some pruned."""
    study = optuna.create_study(study_name="planted", storage=open_storage(storage, heartbeat=None),
                                direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.set_user_attr("proxy", {"size": 64, "epochs": 6, "subset": 0.5, "device": "cpu"})
    rng = np.random.default_rng(0)
    full = {}
    for i in range(n):
        trial = study.ask()
        sample_config(trial)
        quality = rng.uniform(0.2, 0.8)
        steps = 6 if i % 3 else 2
        for epoch in range(1, steps + 1):
            trial.report(quality * epoch / 6, epoch)
        trial.set_user_attr("flops", int(rng.uniform(1e8, 5e8)))
        trial.set_user_attr("per_class_f", [float(v) for v in rng.uniform(0, 1, 19)])
        if artifact is not None and i == 1:
            artifact(trial)
        if steps == 6:
            study.tell(trial, quality)
            full[str(trial.number)] = {"f": full_f(quality), "epochs": 40, "size": 128}
        else:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    study.set_user_attr(ATTR, full)
    return study


def test_report_has_every_section_offline_and_csv_rows(tmp_path):
    study = planted_study(f"sqlite:///{tmp_path / 's.db'}")
    index = write_report(study, tmp_path / "report", progress=False)
    page = index.read_text()
    for title in SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the report must not load remote files"
    for src in re.findall(r'src="([^"]+)"', page):
        assert (tmp_path / "report" / src).stat().st_size > 1000
    rows = (tmp_path / "report" / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + len(study.trials)
    assert "Kendall &tau; = 1.000" in page


def test_report_cli_names_a_missing_study(tmp_path):
    planted_study(f"sqlite:///{tmp_path / 's.db'}", n=3)
    res = run_main("analysis.report", "--study", "nope", "--storage", f"sqlite:///{tmp_path / 's.db'}")
    assert res.returncode == 2 and "available: planted" in res.stderr


def test_fidelity_correlations_on_planted_cases():
    proxy = [0.1, 0.3, 0.5, 0.7, 0.9]
    assert rank_correlations(proxy, [p * 2 for p in proxy]) == pytest.approx((1.0, 1.0))
    assert rank_correlations(proxy, [1 - p for p in proxy]) == pytest.approx((-1.0, -1.0))


def test_fidelity_picks_spread_from_best_to_median(tmp_path):
    study = planted_study(f"sqlite:///{tmp_path / 's.db'}", n=30)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    ranked = sorted(done, key=lambda t: -t.value)
    picks = spread_across_ranking(done, 4)
    assert picks[0].number == ranked[0].number
    assert picks[-1].number == ranked[(len(ranked) - 1) // 2].number and len(picks) == 4
    # a heavily pruned study with 10 complete trials: K = 8 reach below the median instead of giving fewer
    picks = spread_across_ranking(ranked[:10], 8)
    assert len(picks) == 8 and picks[0] is ranked[0] and picks[-1] is ranked[7]


def _fidelity_study(storage: str, data: Path) -> optuna.Study:
    study = optuna.create_study(study_name="f", storage=open_storage(storage, heartbeat=None), direction="maximize")
    for value, name in zip((0.3, 0.2, 0.1), sorted(PRESETS)):
        study.enqueue_trial(PRESETS[name])
        trial = study.ask()
        sample_config(trial)
        study.tell(trial, value)
    study.set_user_attr("data", str(data))  # as search.run records it
    return study


def test_fidelity_cli_retrains_records_and_scores_proxy_variants(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    _fidelity_study(storage, tiny_data)
    res = run_cli("analysis.fidelity", "--study", "f", "--k", "2", "--epochs", "1", "--size", "32",
                  "--storage", storage, "--device", "cpu", "--workers", "2")  # data: the study's own folder
    assert res.returncode == 0, res.stderr[-2000:]
    assert re.search(r"kendall_tau=(-?[0-9.]+|nan) spearman_rho=(-?[0-9.]+|nan) trials=2", res.stdout)
    study = optuna.load_study(study_name="f", storage=storage)
    stored = recorded(study)
    assert set(stored) == {0, 1} and all(0 <= f <= 1 for f in stored.values())
    records = full_records(study)
    assert len(records) == 2 and all(s.seed == 0 and s.schedule == "32:1" for _, s, _ in records)
    again = run_cli("analysis.fidelity", "--study", "f", "--k", "2", "--size", "32:1",
                    "--storage", storage, "--device", "cpu")  # the same setting again: nothing is retrained
    assert again.returncode == 0 and again.stdout.count("already recorded at 32:1 seed 0") == 2
    res = run_cli("analysis.fidelity", "--study", "f", "--proxy", "32:2:0.5", "--storage", storage,
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    found = variant_results(optuna.load_study(study_name="f", storage=storage))["32x2x0.5"]
    assert set(found) == {0, 1} and found[0]["neg_loss_sum"] < 0 and 0 <= found[0]["mean_last2_f"] <= 1
    for signal in ("last_f", "mean_last2_f", "neg_loss_sum"):
        assert f"| 32x2x0.5 | {signal} |" in res.stdout
    assert "| as searched (study) | last_f |" in res.stdout and "tau per CPU-minute |" in res.stdout
    res = run_cli("analysis.fidelity", "--study", "f", "--hand-recipe", "dw_unet", "--epochs", "1", "--size", "32",
                  "--storage", storage, "--device", "cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    assert 0 <= hand_recipe_results(optuna.load_study(study_name="f", storage=storage))["dw_unet"] <= 1
    bad = run_main("analysis.fidelity", "--study", "f", "--proxy", "32:2", "--storage", storage)
    assert bad.returncode == 2 and "expected SIZE:EPOCHS[,SIZE:EPOCHS...]:SUBSET" in bad.stderr
    # a variant may be a resolution schedule (a rung shaped like the final): its own records and table rows
    res = run_cli("analysis.fidelity", "--study", "f", "--proxy", "32:1,48:1:0.5", "--storage", storage,
                  "--device", "cpu")
    assert res.returncode == 0, res.stderr[-2000:]
    assert set(variant_results(optuna.load_study(study_name="f", storage=storage))["32x1-48x1x0.5"]) == {0, 1}
    assert "| 32x1-48x1x0.5 | last_f |" in res.stdout and "| 32x2x0.5 | last_f |" in res.stdout


def test_proxy_variants_parse_a_size_or_a_schedule_then_the_share_of_train():
    from analysis.fidelity import FidelityError, parse_variant, variant_name
    from train.schedule import Stage

    assert parse_variant("96:4:0.4") == ((Stage(96, 4),), 0.4)
    assert variant_name(*parse_variant("96:4:0.4")) == "96x4x0.4"  # the name of the records made before schedules
    assert parse_variant("128:4,256:2:1") == ((Stage(128, 4), Stage(256, 2)), 1.0)
    assert variant_name(*parse_variant("128:4,256:2:1")) == "128x4-256x2x1"
    for bad in ("96:4", "96:4:0", "96:4:1.5", "16:4:0.4", "128:4,256:0.5", "a:b:c"):
        with pytest.raises(FidelityError, match="expected SIZE:EPOCHS"):
            parse_variant(bad)


def test_fidelity_keeps_one_record_per_setting_and_data_folder(tmp_path, tiny_data):
    """Issue 19 item 4 / issue 20 item 3: a retrain at another schedule, seed or data folder is a new record beside
    the earlier ones, never "already recorded" and never written over them."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    _fidelity_study(storage, tiny_data)
    copy = shutil.copytree(tiny_data, tmp_path / "faces-copy")
    base = ["analysis.fidelity", "--study", "f", "--k", "2", "--storage", storage, "--device", "cpu"]
    first = run_cli(*base, "--size", "32", "--epochs", "1")
    assert first.returncode == 0, first.stderr[-2000:]
    for other in (["--size", "32", "--epochs", "1", "--data", str(copy)], ["--size", "32", "--epochs", "1", "--seed",
                  "1"], ["--size", "32:1,48:1"]):
        res = run_cli(*base, *other)
        assert res.returncode == 0 and "already recorded" not in res.stdout, (other, res.stdout, res.stderr[-2000:])
    study = optuna.load_study(study_name="f", storage=storage)
    settings = dict(full_settings(study))
    assert len(full_records(study)) == 8 and set(settings.values()) == {2}
    assert {(s.schedule, s.seed, s.data == str(copy.resolve())) for s in settings} == {
        ("32:1", 0, False), ("32:1", 0, True), ("32:1", 1, False), ("32:1,48:1", 0, False)}


def test_fidelity_retrains_exactly_as_train_final_does(tmp_path, tiny_data, monkeypatch):
    """Same trial, same seed: the same initial weights, EMA and evaluation schedule as `train.final`."""
    import analysis.fidelity as fidelity
    import train.final as final_mod

    storage = f"sqlite:///{tmp_path / 's.db'}"
    _fidelity_study(storage, tiny_data)
    calls = capture_initial_weights(monkeypatch)
    common = ["--study", "f", "--storage", storage, "--size", "32", "--epochs", "20", "--device", "cpu"]
    for seed in (3, 4):
        torch.randn(1000)  # what the process drew before must not matter
        with pytest.raises(StopAtFit):
            fidelity.retrain(fidelity.parse_args([*common, "--seed", str(seed)]), [1], 0)
    with pytest.raises(StopAtFit):
        final_mod.run(final_mod.parse_args([*common, "--trial", "1", "--seed", "3", "--out", str(tmp_path / "o")]))
    fid3, fid4, final = calls
    assert torch.equal(fid3.weights, final.weights) and not torch.equal(fid3.weights, fid4.weights)
    assert fid3.train_cfg == final.train_cfg and final.train_cfg.ema == 0.99
    keys = ("schedule", "eval_every", "seed")
    assert {k: fid3.kwargs[k] for k in keys} == {k: final.kwargs[k] for k in keys} == {
        "schedule": (Stage(32, 20),), "eval_every": 2, "seed": 3}


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def dashboard(tmp_path):
    """optuna-dashboard served in-process on 127.0.0.1, over a study with an artifact."""
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    storage = f"sqlite:///{tmp_path / 's.db'}"
    store = FileSystemArtifactStore(str(tmp_path / "art"))
    (tmp_path / "art").mkdir()
    png = tmp_path / "grid.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(png)
    study = planted_study(storage, n=6, artifact=lambda trial: upload_artifact(
        artifact_store=store, file_path=str(png), study_or_trial=trial))
    app = optuna_dashboard.wsgi(storage, artifact_store=store)
    server = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", study
    server.shutdown()


def test_dashboard_api_lists_study_trials_attrs_and_artifacts(dashboard):
    base, study = dashboard
    summaries = json.load(urllib.request.urlopen(f"{base}/api/studies", timeout=30))["study_summaries"]
    ours = [s for s in summaries if s["study_name"] == "planted"]
    assert len(ours) == 1
    detail = json.load(urllib.request.urlopen(f"{base}/api/studies/{ours[0]['study_id']}", timeout=30))
    trials = detail["trials"]
    assert len(trials) == len(study.trials)
    attrs = {a["key"] for a in trials[1]["user_attrs"]}
    assert {"params", "utilisation", "flops", "per_class_f"} <= attrs
    assert len(trials[1]["artifacts"]) == 1


def test_dashboard_page_in_headless_chromium(dashboard, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Chromium is not installed (Debian package 'chromium'; .ci/run installs it where it can)")
    base, study = dashboard
    shot = tmp_path / "dashboard.png"
    res = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,900",
                          "--virtual-time-budget=8000", f"--screenshot={shot}", f"{base}/dashboard/studies/1"],
                         capture_output=True, text=True, timeout=120)
    assert shot.exists(), res.stderr[-2000:]
    image = np.asarray(Image.open(shot).convert("L"))
    assert image.shape == (900, 1280) and image.std() > 5  # something was drawn, not a blank page


def test_report_tells_what_the_recipe_and_the_architecture_buy(tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="r", storage=open_storage(storage, heartbeat=None), direction="maximize")
    for i, (preset, proxy) in enumerate([("dw_unet", 0.55), ("deeplab_lite", 0.52), (None, 0.6), (None, 0.5)]):
        study.add_trial(optuna.trial.create_trial(value=proxy, user_attrs={"preset": preset} if preset else {}))
        study.set_user_attr(f"{ATTR}:{i}", {"f": [0.78, 0.76, 0.79, 0.70][i]})
    assert recipe_and_architecture(study) == []  # not a fixed-recipe study: nothing to separate
    study.set_user_attr("fixed", {"batch_size": 8})
    study.set_user_attr(f"{HAND_ATTR}:dw_unet", {"f": 0.73})
    study.set_user_attr(f"{ATTR}:3:other", {"f": 0.99, "schedule": "256:20", "seed": 0})  # another setting: apart
    rows = recipe_and_architecture(study)
    assert [r for r, _, _ in rows] == ["preset dw_unet at its hand recipe", "preset dw_unet at the study's recipe",
                                       "searched #2 at the study's recipe"]
    assert [g for _, _, g in rows] == ["", "recipe: +0.0500", "architecture: +0.0100"]
    page = write_report(study, tmp_path / "rep", progress=False).read_text()
    assert "What the recipe buys and what the architecture buys" in page and "architecture: +0.0100" in page


def test_seed_spread_reads_only_the_named_schedule_ema_and_data(tmp_path):
    study = optuna.create_study(study_name="s", storage=open_storage(f"sqlite:///{tmp_path / 's.db'}", heartbeat=None))
    base = {"schedule": "128:24,256:12", "ema": 0.99, "data": "/d"}
    for key, extra in [("0:a", {"f": 0.80, "seed": 0}), ("0:b", {"f": 0.83, "seed": 1}),  # spread 0.03
                       ("0:c", {"f": 0.50, "seed": 2, "schedule": "128:20"}),  # another schedule: apart
                       ("0:d", {"f": 0.10, "seed": 3, "data": "/other"}),  # another data folder: apart
                       ("1:a", {"f": 0.70, "seed": 0})]:  # one seed only: no spread
        study.set_user_attr(f"{ATTR}:{key}", {**base, **extra})
    setting = next(s for item, s, _ in full_records(study) if item == "0" and s.seed == 1)
    spreads = seed_spreads(study, setting)
    assert spreads == {0: {0: 0.80, 1: 0.83}}


def test_a_train_final_run_of_the_trial_is_recorded_as_its_full_f_and_another_trials_is_refused(tmp_path, tiny_data):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    _fidelity_study(storage, tiny_data)
    out = tmp_path / "final1"
    res = run_cli("train.final", "--study", "f", "--storage", storage, "--trial", "1", "--size", "32", "--epochs", "1",
                  "--device", "cpu", "--out", str(out))
    assert res.returncode == 0, res.stderr[-2000:]
    f = json.loads((out / "final.json").read_text())["val_f"]
    res = run_cli("analysis.fidelity", "--study", "f", "--storage", storage, "--from-final", str(out), "--trial", "1")
    assert res.returncode == 0 and f"trial #1: full F {f:.4f} at 32:1 seed 0 EMA 0.99 recorded from" in res.stdout
    records = [(item, s, v) for item, s, v in full_records(optuna.load_study(study_name="f", storage=storage))]
    assert [(item, s.schedule, s.data, v["f"]) for item, s, v in records] == [("1", "32:1", str(tiny_data.resolve()),
                                                                               f)]
    assert records[0][2]["source"] == f"train.final {out}"
    wrong = run_main("analysis.fidelity", "--study", "f", "--storage", storage, "--from-final", str(out), "--trial",
                     "0")
    assert wrong.returncode == 2 and "is not a finished run of trial #0's configs" in wrong.stderr
    # a run of code from before rfs_threshold existed (its train settings lack it) is the same run
    last = torch.load(out / "last.pth", weights_only=True)
    del last["train"]["rfs_threshold"]
    torch.save(last, out / "last.pth")
    res = run_cli("analysis.fidelity", "--study", "f", "--storage", storage, "--from-final", str(out), "--trial", "1")
    assert res.returncode == 0, res.stderr[-2000:]


def test_compare_scores_a_run_without_per_class_figures_as_prediction_and_the_metric_do(final_run, tiny_data,
                                                                                      tmp_path):
    """analysis.compare: a run whose final.json predates the per-class figures is scored again from its
    checkpoint; the figures equal those of its masks written by train.predict (no flip TTA) and scored by
    train.metric. The checkpoint's weights are perturbed so that it predicts many classes (a 1-epoch run predicts
    one class everywhere, which any scoring path gets right)."""
    import json
    import shutil

    from train.metric import score_folders

    old = tmp_path / "old"
    shutil.copytree(final_run, old)
    record = json.loads((old / "final.json").read_text())
    del record["per_class"]
    (old / "final.json").write_text(json.dumps(record))
    ckpt = torch.load(old / "ckpt.pth", weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for name, t in ckpt["state_dict"].items():
        if t.dim() == 4:
            t += torch.randn(t.shape, generator=gen) * t.std() * 3
        elif name == "head.bias":
            t.zero_()
    torch.save(ckpt, old / "ckpt.pth")
    res = run_cli("analysis.compare", "--runs", f"new={final_run}", "--runs", f"old={old}")
    assert res.returncode == 0, res.stderr[-2000:]
    rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in res.stdout.splitlines()[2:]}
    pred = run_cli("train.predict", "--weights", str(old / "ckpt.pth"), "--input", str(tiny_data / "val" / "images"),
                   "--out", str(tmp_path / "pred"), "--no-flip-tta", "--device", "cpu")
    assert pred.returncode == 0, pred.stderr[-2000:]
    scorer = score_folders(tiny_data / "val" / "masks", tmp_path / "pred")
    assert rows["**val F**"][2] == f"{scorer.f_measure:.4f}"
    expected = ["-" if not n else f"{f:.4f}" for f, n in zip(scorer.per_class_image_f(), scorer.class_count)]
    got = [rows[k][2] for k in rows if k[0].isdigit()]
    assert got == expected and any(v not in ("-", "0.0000") for v in got), (got, expected)
    labels = set().union(*(np.unique(np.asarray(Image.open(p))) for p in (tmp_path / "pred").glob("*.png")))
    assert len(labels) >= 4, labels  # the perturbed network predicts many classes
    written = json.loads((final_run / "final.json").read_text())  # a run with per-class figures: taken as written
    assert [rows[k][1] for k in rows if k[0].isdigit()] == ["-" if c["f"] is None else f"{c['f']:.4f}"
                                                              for c in written["per_class"]]
    bad = run_main("analysis.compare", "--runs", f"x={tmp_path}")
    assert bad.returncode == 2 and f"{tmp_path}: not a finished train.final output folder" in bad.stderr
    bad = run_main("analysis.compare", "--runs", "nonsense")
    assert bad.returncode == 2 and "expected NAME=RUN" in bad.stderr


def test_compare_refuses_a_name_given_twice_and_asks_for_data_when_no_checkpoint_names_it(final_run, tmp_path,
                                                                                           capsys):
    import json
    import shutil

    from analysis.compare import main as compare

    twice = run_main("analysis.compare", "--runs", f"a={final_run}", "--runs", f"a={final_run}")
    assert twice.returncode == 2 and "the group name 'a' is given twice" in twice.stderr  # not a silent drop
    old = tmp_path / "old"  # a run from before final.json held per-class figures and last.pth named its data
    shutil.copytree(final_run, old)
    record = json.loads((old / "final.json").read_text())
    del record["per_class"]
    (old / "final.json").write_text(json.dumps(record))
    last = torch.load(old / "last.pth", weights_only=True)
    del last["data"]
    torch.save(last, old / "last.pth")
    assert compare(["--runs", f"old={old}"]) == 2  # was KeyError: 'data'
    assert "no last.pth names the data folder it trained on: give --data ROOT" in capsys.readouterr().err
