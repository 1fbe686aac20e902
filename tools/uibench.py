"""Interactive-path benchmark: CAM methods, first overlay, single and batch classification.

``python -m tools.uibench --dataset pbc-64 --model resnet18`` prints
- per CAM method: median and IQR of one map on one real test cell after warm-up;
- the first overlay in a fresh process, from loading the checkpoint to the overlay;
- one upload (decode, frame, classify) after warm-up, through the runner the app uses;
- a batch of 100 real uploads through :func:`bloodviz.predict.classify`.
Figures are medians over repeats; the thread count is fixed and printed.

``python -m tools.uibench --soak 2000 --dataset pbc-64 --models resnet18 cnn_baseline ...``
is the soak benchmark instead: that many CAM requests mixing every method and model (the slow
perturbation methods every 100th request, as a page would ask for them rarely) on real test
cells, through explainers shared by 4 threads as Streamlit sessions share cached ones, and
prints resident memory after warm-up and at the end (target: growth <= 30 MB).
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import time

import numpy as np
import torch

from bloodviz.checkpoints import checkpoint_dir, open_checkpoint
from bloodviz.data import get_dataset
from bloodviz.explain import CAM_METHODS, SLOW_METHODS, Explainer
from bloodviz.predict import Runner, classify


def _median_iqr(samples: list[float]) -> tuple[float, float]:
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return float(med), float(q3 - q1)


def first_overlay_seconds(path: str, sample: str) -> dict:
    """Fresh process: imports, then open checkpoint, load model, decode the cell, one overlay.

    The running app has paid for the imports at start-up; what a page's first overlay costs
    is the part after them (``after_imports``).
    """
    code = f"""
import time, json
t0 = time.perf_counter()
from bloodviz.checkpoints import open_checkpoint
from bloodviz.data import get_dataset
from bloodviz.explain import Explainer
t1 = time.perf_counter()
ckpt = open_checkpoint({path!r})
data = get_dataset(ckpt.dataset, ckpt.size)
cell = ckpt.preprocessing.prepare(data.open_image({sample!r}), data.default_framing)
Explainer.from_checkpoint(ckpt).explain(cell, "gradcam")
t2 = time.perf_counter()
print(json.dumps({{"imports": t1 - t0, "after_imports": t2 - t1, "total": t2 - t0}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss_mb() -> float:
    """Current resident memory of this process (not the peak)."""
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def soak(dataset_key: str, models: list[str], requests: int, threads: int = 4) -> int:
    """CAM requests in a loop over methods, models and cells; prints memory growth."""
    import ctypes
    from concurrent.futures import ThreadPoolExecutor

    ckpts = [open_checkpoint(checkpoint_dir(dataset_key, m)) for m in models]
    data = get_dataset(ckpts[0].dataset, ckpts[0].size)
    ids = [str(s) for s in ckpts[0].predictions("test").ids[:50]]
    cells = [ckpts[0].preprocessing.prepare(data.open_image(i), data.default_framing) for i in ids]
    explainers = [Explainer.from_checkpoint(c) for c in ckpts]
    fast = [m for m in CAM_METHODS if m not in SLOW_METHODS]
    slow = sorted(SLOW_METHODS)

    def job(i: int) -> None:
        method = slow[(i // 100) % len(slow)] if i % 100 == 99 else fast[i % len(fast)]
        explainers[i % len(explainers)].explain(
            cells[i % len(cells)], method, faithfulness=i % 3 == 0
        )

    def trim() -> None:  # hand freed heap back to the OS, as the app does after loads
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass

    warmup = 3 * len(fast) * len(explainers)
    with ThreadPoolExecutor(threads) as pool:
        # warm up through the same threads: each keeps allocator arenas and oneDNN caches of
        # its own, a one-off cost that is not a leak
        list(pool.map(job, range(-warmup, 0)))
        trim()
        start = rss_mb()
        tick = time.perf_counter()
        marks = []
        step = max(1, requests // 10)
        for done in range(0, requests, step):
            list(pool.map(job, range(done, min(requests, done + step))))
            trim()
            marks.append(round(rss_mb()))
    seconds = time.perf_counter() - tick
    end = rss_mb()
    hooks = sum(
        len(m._forward_hooks) + len(m._backward_hooks)
        for e in explainers
        for m in e.model.modules()
    )
    print(
        f"soak: {requests} CAM requests ({', '.join(models)} on {dataset_key}; methods "
        f"{', '.join(fast)} and every 100th {'/'.join(slow)}; ROAD on every 3rd) from {threads} "
        f"threads in {seconds:.0f} s"
    )
    print(
        f"resident memory after warm-up {start:.0f} MB, at the end {end:.0f} MB: growth "
        f"{end - start:+.1f} MB (target <= 30 MB); every tenth: {marks}"
    )
    print(f"hooks left on the models: {hooks}")
    return 0 if end - start <= 30 and hooks == 0 else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.uibench")
    parser.add_argument("--dataset", default="pbc-64", help="dataset key, e.g. pbc-64")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--slow-repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--soak", type=int, default=0, help="run the soak benchmark instead")
    parser.add_argument("--models", nargs="+", default=None, help="models for --soak")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.soak:
        return soak(args.dataset, args.models or [args.model], args.soak)
    ckpt = open_checkpoint(checkpoint_dir(args.dataset, args.model))
    data = get_dataset(ckpt.dataset, ckpt.size)
    preds = ckpt.predictions("test")
    sample = str(preds.ids[0])
    cell = ckpt.preprocessing.prepare(data.open_image(sample), data.default_framing)
    print(f"{args.model} on {args.dataset}, cell {sample}, torch threads {torch.get_num_threads()}")

    explainer = Explainer.from_checkpoint(ckpt)
    print(f"{'method':14s} {'median ms':>10s} {'IQR ms':>8s} {'runs':>5s}")
    for method in CAM_METHODS:
        repeats = args.slow_repeats if method in SLOW_METHODS else args.repeats
        explainer.explain(cell, method)  # warm-up
        times = []
        for _ in range(repeats):
            tick = time.perf_counter()
            explainer.explain(cell, method)
            times.append((time.perf_counter() - tick) * 1000)
        med, iqr = _median_iqr(times)
        print(f"{method:14s} {med:10.1f} {iqr:8.1f} {repeats:5d}")

    firsts = [first_overlay_seconds(str(ckpt.path), sample) for _ in range(3)]
    after = np.median([f["after_imports"] for f in firsts])
    imports = np.median([f["imports"] for f in firsts])
    print(
        f"first Grad-CAM overlay, fresh process: checkpoint + model load + first map "
        f"{after:.2f} s (the page's cost; app start-up imports {imports:.2f} s more), median of 3"
    )

    runner = Runner(ckpt)
    upload = data.open_image(sample)
    buffer = io.BytesIO()
    upload.convert("RGB").save(buffer, format="PNG")
    payload = [("cell.png", buffer.getvalue())]
    classify(payload, [ckpt], {ckpt.name: runner})  # warm-up
    times = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        classify(payload, [ckpt], {ckpt.name: runner})
        times.append((time.perf_counter() - tick) * 1000)
    med, iqr = _median_iqr(times)
    print(
        f"one upload (decode + frame + classify, {runner.backend}): median {med:.1f} ms, "
        f"IQR {iqr:.1f} ms over {args.repeats}"
    )

    files = []
    for sid in preds.ids[: args.batch]:
        buffer = io.BytesIO()
        data.open_image(str(sid)).convert("RGB").save(buffer, format="JPEG", quality=95)
        files.append((str(sid), buffer.getvalue()))
    batch_times = []
    for _ in range(3):
        tick = time.perf_counter()
        results = classify(files, [ckpt], {ckpt.name: runner})
        batch_times.append(time.perf_counter() - tick)
    assert all(r.error is None for r in results)
    print(
        f"batch of {len(files)} real JPEG uploads: median {np.median(batch_times):.2f} s "
        f"over 3 runs"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
