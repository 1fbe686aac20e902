"""Peak-memory probe, run as a fresh process by the benchmark.

``python -m bloodviz.memprobe baseline`` imports what inference imports and stops;
``infer PATH`` also loads the checkpoint and classifies one real test image (a synthetic one if
the data is not at hand); ``train PATH`` runs one training step at batch 64.
Prints one JSON line with the process's peak resident set size in MB.
"""

from __future__ import annotations

import json
import resource
import sys

import numpy as np
import torch

from bloodviz.checkpoints import open_checkpoint


def peak_rss_mb() -> float:
    """This process's own peak resident set (VmHWM), in MB.

    Not getrusage's ru_maxrss: on Linux that survives fork and exec, so a probe started by a
    process that already holds models would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB elsewhere


def main(argv: list[str]) -> dict:
    mode = argv[0]
    if mode == "baseline":
        return {"mode": mode, "peak_rss_mb": peak_rss_mb()}
    ckpt = open_checkpoint(argv[1])
    prep = ckpt.preprocessing
    if mode == "infer":
        source = "synthetic"
        try:
            from bloodviz.data import get_dataset

            split = ckpt.default_split
            sample = ckpt.predictions(split).ids[0]
            dataset = get_dataset(ckpt.dataset, ckpt.size)
            image = prep.prepare(dataset.open_image(sample), dataset.default_framing)
            source = f"{ckpt.dataset}:{sample}"
        except Exception:  # data not at hand: the memory of one image is the same
            image = np.random.default_rng(0).integers(0, 255, (prep.size, prep.size, 3), np.uint8)
        model = ckpt.cost_model()
        with torch.inference_mode():
            probs = torch.softmax(model(prep.normalize(image)), 1)
        return {
            "mode": mode,
            "peak_rss_mb": peak_rss_mb(),
            "input": source,
            "top": int(probs.argmax()),
        }
    if mode == "train":
        model = ckpt.build_model().train()
        optimizer = torch.optim.AdamW(model.parameters())
        x = torch.randn(64, 3, prep.size, prep.size)
        y = torch.randint(0, prep.num_classes, (64,))
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        return {"mode": mode, "peak_rss_mb": peak_rss_mb(), "batch": 64, "precision": "fp32"}
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1:])))
