from __future__ import annotations

import json

from conftest import run_cli


def test_gpu_tier_smoke_runs_the_whole_path_on_the_cpu(tmp_path):
    """`bench.gpu_tier --smoke`: throughput, a 2-worker search, train.final of the best, one JSON."""
    res = run_cli("bench.gpu_tier", "--smoke", "--out", str(tmp_path / "tier"), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    report = json.loads((tmp_path / "tier" / "gpu_tier.json").read_text())
    assert report["device"].startswith("cpu") and set(report["seconds"]) == {"sync_check", "throughput", "search",
                                                                              "final"}
    # the device path's steps ran (unchecked off CUDA: the sync debug mode needs a GPU); MPS only when asked
    assert report["sync_check"]["checked"] is False and report["sync_check"]["error"] is None
    assert report["sync_check"]["accel"]["device_data"] is False and report["mps"] is False
    assert report["search"]["trials"] == 3 and report["search"]["workers"] == 2  # all asked for, none lost
    assert report["search"]["trials_per_hour"] > 0 and report["throughput"][0]["efficiency"] > 0
    assert 0 <= report["final"]["val_f"] <= 1 and report["final"]["size"] == 32
    assert "val F" in res.stdout and (tmp_path / "tier" / "final" / "ckpt.pth").exists()


def test_gpu_tier_refuses_to_run_without_a_gpu(tmp_path):
    res = run_cli("bench.gpu_tier", "--data", str(tmp_path), cwd=tmp_path)
    assert res.returncode == 2 and "needs a CUDA device" in res.stderr


def test_schedule_benchmark_prices_each_schedule(tiny_data):
    from bench.schedule import scorings
    from train.schedule import parse_schedule

    # full_fit scores every epochs // 10 epochs and at the end of each stage
    assert scorings(parse_schedule("128:24,256:12")) == {128: 8, 256: 4}  # every 3rd epoch
    assert scorings(parse_schedule("256:20")) == {256: 10}
    res = run_cli("bench.schedule", "--data", str(tiny_data), "--schedules", "32:2", "32:1,48:1", "--set",
                  "batch_size=8")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "32 px: decode" in res.stdout and "48 px: decode" in res.stdout
    assert "32:1,48:1:" in res.stdout and "min predicted (2 epochs, 2 scorings)" in res.stdout


def test_gpu_flow_script_dry_run_writes_every_step(tmp_path):
    """bench/gpu_flow.sh run OUT --dry-run: the GPU script's own command line and steps, on the CPU at tiny sizes
    (an argument error must never cost GPU time)."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out = tmp_path / "flow"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    res = subprocess.run(["bash", str(REPO / "bench" / "gpu_flow.sh"), "run", str(out), "--dry-run"], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    tier, final, search = (json.loads((out / f"{name}.json").read_text()) for name in ("tier", "final", "search"))
    assert tier["device"].startswith("cpu") and tier["throughput"][0]["efficiency"] > 0
    assert 0 <= final["val_f"] <= 1 and 0 <= final["val_f_flip_tta"] <= 1 and final["size"] == 32
    assert search["trials"] == 3 and search["trials_per_gpu_minute"] > 0 and search["proxy"]["size"] == 32
    for step in ("tier", "final", "search"):
        assert f"gpu_flow: {step} done:" in res.stdout
    bad = subprocess.run(["bash", str(REPO / "bench" / "gpu_flow.sh"), "run", str(out), "--final-minutes", "0"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "--final-minutes must be > 0" in bad.stderr
