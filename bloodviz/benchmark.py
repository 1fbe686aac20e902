"""Cost benchmark: latency, throughput, memory, parameters and FLOPs of shipped checkpoints.

Timings use ``torch.utils.benchmark.Timer.blocked_autorange`` after warm-up, with the thread
count fixed and recorded; medians and inter-quartile ranges are reported. FLOPs come from
``torch.utils.flop_counter`` (2 FLOPs per multiply-accumulate); MACs are FLOPs / 2. Peak memory
is the peak resident set of a fresh subprocess, so models measured earlier cannot inflate it.
Results are stored beside the checkpoint as ``bench-<device>.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from torch.utils import benchmark as tbench
from torch.utils.flop_counter import FlopCounterMode

from bloodviz.checkpoints import Checkpoint, write_json
from bloodviz.inference import export_onnx, hardware_info, onnx_session, softmax, versions
from bloodviz.literature import reported_cost

ONNX_TOLERANCE = 1e-4


def timing(fn, threads: int, min_run_time: float = 1.0, warmup: int = 3) -> dict:
    """Median and IQR (seconds) of ``fn()`` over repeated blocks, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
    m = timer.blocked_autorange(min_run_time=min_run_time)
    q1, q3 = np.percentile(m.times, [25, 75])
    return {
        "median_s": float(m.median),
        "q1_s": float(q1),
        "q3_s": float(q3),
        "iqr_s": float(q3 - q1),
        "blocks": len(m.times),
        "runs": int(m.number_per_run * len(m.times)),
    }


def speed_figures(lat: dict, thr: dict) -> dict:
    """A result's latency (batch 1, ms) and throughput (batch 64, images/s) entries from two
    :func:`timing` results."""
    return {
        "latency_b1_ms": {
            k.removesuffix("_s") + "_ms": v * 1e3 for k, v in lat.items() if k.endswith("_s")
        },
        "latency_b1_runs": lat["runs"],
        "throughput_b64_ips": {
            "median": 64 / thr["median_s"],
            "q1": 64 / thr["q3_s"],
            "q3": 64 / thr["q1_s"],
        },
        "throughput_b64_runs": thr["runs"],
    }


def count_flops(model: torch.nn.Module, size: int) -> int:
    """Forward FLOPs for one image (torch.utils.flop_counter counts 2 per MAC)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return int(counter.get_total_flops())


def peak_rss(ckpt: Checkpoint | None, mode: str) -> dict:
    """Peak RSS (MB) of a fresh process: 'baseline' imports only, 'infer' or 'train' a step."""
    args = [sys.executable, "-m", "bloodviz.memprobe", mode]
    if ckpt is not None:
        args.append(str(ckpt.path))
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"memory probe failed: {result.stderr.strip()[-500:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def bench_checkpoint(
    ckpt: Checkpoint,
    device: str = "cpu",
    threads: int | None = None,
    min_run_time: float = 1.0,
    with_onnx: bool = True,
    with_memory: bool = True,
    baseline_rss: dict | None = None,
    command: str = "",
) -> dict:
    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    model = ckpt.cost_model()
    size = ckpt.preprocessing.size
    params = sum(p.numel() for p in model.parameters())
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    flops = count_flops(model, size)  # on CPU, before the model moves to the device
    model = model.to(dev)
    rng = np.random.default_rng(0)
    one = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype(np.float32)).to(dev)
    batch = torch.from_numpy(rng.standard_normal((64, 3, size, size)).astype(np.float32)).to(dev)

    def run(x):
        def call():
            with torch.inference_mode():
                model(x)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        return call

    lat = timing(run(one), threads, min_run_time)
    thr = timing(run(batch), threads, min_run_time)
    result = {
        "model": ckpt.model,
        "checkpoint": ckpt.name,  # the model, or a variant of it (inception_eff3-robust)
        "dataset": ckpt.dataset_key,
        "device": device,
        "threads": threads,
        "hardware": hardware_info(dev),
        "versions": versions(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "parameters": params,
        "weight_bytes_fp32": weight_bytes,
        "checkpoint_file_bytes": ckpt.weights_bytes,
        "weights_measured": "trained" if ckpt.has_weights else "untrained, same architecture",
        "checkpoint_dtype": ckpt.run.weights_dtype,
        "flops": flops,
        "macs": flops // 2,
        "flops_counter": "torch.utils.flop_counter (2 FLOPs per MAC)",
        "input_size": size,
        **speed_figures(lat, thr),
        "train": {
            "images_per_s": ckpt.run.train_images_per_s,
            "device": ckpt.run.device,
            "precision": ckpt.run.precision,
            "hardware": dict(ckpt.run.hardware),
        },
        "reported": cost.__dict__ if (cost := reported_cost(ckpt.model)) else None,
    }
    if with_onnx and device == "cpu":
        result["onnx"] = bench_onnx(ckpt, model, one, batch, threads, min_run_time)
    if with_memory and device == "cpu":
        baseline = baseline_rss or peak_rss(None, "baseline")
        infer = peak_rss(ckpt, "infer")
        train = peak_rss(ckpt, "train")
        result["memory_mb"] = {
            "baseline_process_peak_rss": baseline["peak_rss_mb"],
            "infer_one_image_peak_rss": infer["peak_rss_mb"],
            "train_step_b64_peak_rss": train["peak_rss_mb"],
            "infer_over_baseline": infer["peak_rss_mb"] - baseline["peak_rss_mb"],
            "train_over_baseline": train["peak_rss_mb"] - baseline["peak_rss_mb"],
            "infer_input": infer.get("input"),
        }
    elif with_memory and device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        step_model = ckpt.cost_model().to(dev).train()
        loss = step_model(batch).logsumexp(1).mean()
        loss.backward()
        result["memory_mb"] = {
            "cuda_train_step_b64_peak": torch.cuda.max_memory_allocated() / 2**20
        }
    return result


def bench_onnx(ckpt, model, one, batch, threads, min_run_time) -> dict:
    path = export_onnx(ckpt, model.cpu())
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    one_np, batch_np = one.cpu().numpy(), batch.cpu().numpy()
    lat = timing(lambda: session.run(None, {name: one_np}), threads, min_run_time)
    thr = timing(lambda: session.run(None, {name: batch_np}), threads, min_run_time)
    with torch.inference_mode():
        ref = torch.softmax(model.cpu()(batch.cpu()), 1).numpy()
    got = softmax(session.run(None, {name: batch_np})[0])
    diff = float(np.abs(ref - got).max())
    return {
        "runtime": f"onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider",
        "file_bytes": path.stat().st_size,
        "latency_b1_ms": {"median_ms": lat["median_s"] * 1e3, "iqr_ms": lat["iqr_s"] * 1e3},
        "throughput_b64_ips": {"median": 64 / thr["median_s"]},
        "max_abs_prob_diff_vs_torch": diff,
        "matches": diff <= ONNX_TOLERANCE,
    }


def bench_imported_onnx(
    ckpt: Checkpoint, threads: int | None = None, min_run_time: float = 1.0, command: str = ""
) -> dict:
    """ONNX Runtime latency and throughput of an imported ONNX model (there is no PyTorch
    model to time, count FLOPs of or probe for memory: those figures stay empty)."""
    import onnx

    from bloodviz.imports import imported_onnx_file

    path = imported_onnx_file(ckpt)
    if path is None:
        raise ValueError(f"{ckpt.name} on {ckpt.dataset_key} has no ONNX file to benchmark")
    threads = threads or torch.get_num_threads()
    session = onnx_session(path, threads)
    name = session.get_inputs()[0].name
    size = ckpt.preprocessing.size
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, size, size)).astype(np.float32)
    batch = rng.standard_normal((64, 3, size, size)).astype(np.float32)
    lat = timing(lambda: session.run(None, {name: one}), threads, min_run_time)
    thr = timing(lambda: session.run(None, {name: batch}), threads, min_run_time)
    graph = onnx.load(str(path), load_external_data=False).graph
    params = int(sum(np.prod(t.dims) for t in graph.initializer))
    return {
        "model": ckpt.model,
        "checkpoint": ckpt.name,  # the model, or a variant of it (inception_eff3-robust)
        "dataset": ckpt.dataset_key,
        "device": "cpu",
        "threads": threads,
        "hardware": hardware_info(),
        "versions": versions(),
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "runtime": f"onnxruntime {__import__('onnxruntime').__version__} CPUExecutionProvider",
        "parameters": params,
        "parameters_counted": "elements of the ONNX graph's initializers",
        "checkpoint_file_bytes": path.stat().st_size,
        "weights_measured": "the imported ONNX file",
        "flops": None,
        "input_size": size,
        **speed_figures(lat, thr),
        "train": {},
        "reported": None,
        "use_onnx": True,
    }


def decide_onnx(result: dict) -> bool:
    """ONNX Runtime serves predictions where it is faster at batch 1 and matches PyTorch."""
    onnx = result.get("onnx")
    if not onnx:
        return False
    faster = onnx["latency_b1_ms"]["median_ms"] < result["latency_b1_ms"]["median_ms"]
    return bool(faster and onnx["matches"])


def store(ckpt: Checkpoint, result: dict) -> Path:
    path = ckpt.path / f"bench-{result['device']}.json"
    previous = json.loads(path.read_text()) if path.exists() else None
    if previous:
        before = previous["latency_b1_ms"]["median_ms"]
        result["previous_latency_b1_ms"] = before
        result["latency_change_vs_previous"] = result["latency_b1_ms"]["median_ms"] / before - 1
    if result.get("onnx"):
        result["use_onnx"] = decide_onnx(result)
    if result.get("latency_change_vs_previous") is None:
        result.pop("latency_change_vs_previous", None)
    write_json(path, result)
    return path


def format_table(results: list[dict]) -> str:
    head = (
        f"{'dataset':15s} {'model':14s} {'params':>9s} {'MFLOPs':>8s} {'file MB':>7s} "
        f"{'b1 ms (IQR)':>15s} {'b64 img/s':>9s} {'ORT b1 ms':>9s} {'ORT img/s':>9s} "
        f"{'ORT ok':>6s} {'RSS inf':>7s} {'RSS trn':>7s} {'trn img/s':>9s} "
        f"{'study ms/step':>13s} {'study MB':>8s} {'vs prev':>7s}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        onnx = r.get("onnx") or {}
        mem = r.get("memory_mb") or {}
        rep = r.get("reported") or {}
        change = r.get("latency_change_vs_previous")

        def fmt(v, spec):
            return format(v, spec) if v is not None else "-"

        lat = r["latency_b1_ms"]
        lines.append(
            f"{r['dataset']:15s} {r.get('checkpoint', r['model']):14s} {r['parameters']:9d} "
            f"{fmt(r['flops'] and r['flops'] / 1e6, '8.1f')} "
            f"{fmt((r['checkpoint_file_bytes'] or 0) / 2**20, '7.1f')} "
            f"{lat['median_ms']:7.2f} ({lat['iqr_ms']:5.2f}) "
            f"{r['throughput_b64_ips']['median']:9.0f} "
            f"{fmt(onnx.get('latency_b1_ms', {}).get('median_ms'), '9.2f')} "
            f"{fmt(onnx.get('throughput_b64_ips', {}).get('median'), '9.0f')} "
            f"{('yes' if r.get('use_onnx') else 'no'):>6s} "
            f"{fmt(mem.get('infer_one_image_peak_rss'), '7.0f')} "
            f"{fmt(mem.get('train_step_b64_peak_rss'), '7.0f')} "
            f"{fmt(r['train'].get('images_per_s'), '9.1f')} "
            f"{fmt(rep.get('ms_per_step'), '13.2f')} {fmt(rep.get('memory_mb'), '8.2f')} "
            f"{(f'{change:+.1%}' if change is not None else '-'):>7s}"
        )
    lines.append(
        "times: median over torch.utils.benchmark blocks after warm-up; RSS: peak resident MB of "
        "a fresh process (inference: load + classify one image; training: one step at batch 64); "
        "MFLOPs per image = 2 x MACs; study columns are study 002's own units (Keras ms/step, "
        "weight MB), not comparable hardware; 'ORT ok' = ONNX Runtime faster at batch 1 and "
        f"within {ONNX_TOLERANCE} of PyTorch, so predict uses it."
    )
    return "\n".join(lines)
