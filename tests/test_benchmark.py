"""The benchmark's figures are consistent with the model they describe (speed is not asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import train_tiny

from bloodviz import benchmark
from bloodviz.checkpoints import open_checkpoint

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    root, env = train_tiny(tmp_path_factory, size=28, limit=4)
    return root, {**os.environ, **env}


def test_flops_match_a_hand_count():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
    # 8 output channels x 28 x 28 positions x (3 x 3 x 3) MACs, 2 FLOPs each
    assert benchmark.count_flops(conv, 28) == 2 * 8 * 28 * 28 * 27


@pytest.mark.slow
def test_bench_command_stores_and_shows(ckpt):
    root, env = ckpt
    args = [
        sys.executable,
        "-m",
        "bloodviz",
        "bench",
        "--dataset",
        "pbc-28",
        "--threads",
        "1",
        "--min-time",
        "0.2",
    ]
    first = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "cnn_baseline" in first.stdout and "MFLOPs" in first.stdout
    stored = json.loads((root / "pbc-28" / "cnn_baseline" / "bench-cpu.json").read_text())
    model = open_checkpoint(root / "pbc-28" / "cnn_baseline").load_model()
    assert stored["parameters"] == sum(p.numel() for p in model.parameters())
    assert stored["flops"] == benchmark.count_flops(model, 28) == 2 * stored["macs"]
    assert stored["threads"] == 1 and stored["versions"]["torch"] == torch.__version__
    lat = stored["latency_b1_ms"]
    assert 0 < lat["q1_ms"] <= lat["median_ms"] <= lat["q3_ms"]
    assert stored["onnx"]["max_abs_prob_diff_vs_torch"] < 1e-4 and stored["onnx"]["matches"]
    mem = stored["memory_mb"]
    assert mem["infer_one_image_peak_rss"] >= mem["baseline_process_peak_rss"] > 50
    assert mem["infer_input"].startswith("pbc:")
    # --stored --json prints what was stored, measuring nothing
    shown = subprocess.run(
        args + ["--stored", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert json.loads(shown.stdout)[0]["measured_at"] == stored["measured_at"]


@pytest.mark.slow
def test_memory_probe_is_not_inflated_by_its_parent(ckpt):
    """A probe started by a process holding 1.5 GB must not report the parent's peak."""
    root, env = ckpt
    code = (
        "import subprocess, sys, json\n"
        "ballast = bytearray(1500 * 2**20)\n"
        "for i in range(0, len(ballast), 4096): ballast[i] = 1\n"
        "out = subprocess.run([sys.executable, '-m', 'bloodviz.memprobe', 'baseline'],"
        " capture_output=True, text=True, check=True).stdout\n"
        "print(out.strip().splitlines()[-1])\n"
    )
    alone = subprocess.run(
        [sys.executable, "-m", "bloodviz.memprobe", "baseline"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    nested = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True
    )
    alone_mb = json.loads(alone.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    nested_mb = json.loads(nested.stdout.strip().splitlines()[-1])["peak_rss_mb"]
    assert abs(nested_mb - alone_mb) < 100, (alone_mb, nested_mb)


@pytest.mark.slow
def test_a_damaged_benchmark_file_reads_as_none(tmp_path, ckpt):
    import shutil

    from bloodviz.predict import Runner

    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt[0] / "pbc-28" / "cnn_baseline", folder)
    (folder / "bench-cpu.json").write_text('{"use_onnx": tru')  # cut off mid-write
    damaged = open_checkpoint(folder)
    assert damaged.bench() is None
    assert Runner(damaged).backend == "pytorch"
