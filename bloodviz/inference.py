"""Running a model over decoded images, and what machine it runs on.

Importing this module does not import torch: upload classification in the app runs on ONNX
Runtime alone (about 600 MB lighter), so torch is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bloodviz.paths import REPO_ROOT, cache_root
from bloodviz.preprocess import Preprocessing

if TYPE_CHECKING:
    import torch


def pick_device(requested: str = "auto") -> torch.device:
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for, but no CUDA GPU is available")
    return torch.device(requested)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX512-BF16 / AMX); elsewhere bf16 is slower."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def pick_precision(requested: str, device: torch.device) -> str:
    if requested != "auto":
        return requested
    if device.type == "cuda":
        import torch

        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of numpy logits, in float64 (for ONNX Runtime's outputs)."""
    shifted = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def predict_probs(
    model: torch.nn.Module,
    prep: Preprocessing,
    images: np.ndarray,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> np.ndarray:
    """Softmax probabilities (float64, N x K) for uint8 NHWC images, in fp32."""
    import torch

    device = torch.device(device)
    model = model.to(device).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = prep.normalize(images[start : start + batch_size]).to(device)
            out.append(torch.softmax(model(batch).float(), dim=1).cpu().double().numpy())
    if not out:
        return np.zeros((0, prep.num_classes))
    return np.concatenate(out)


def hardware_info(device: torch.device | None = None) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def versions() -> dict:
    import timm
    import torch
    import torchvision

    import bloodviz

    info = {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "numpy": np.__version__,
        "bloodviz": bloodviz.__version__,
    }
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


# -- ONNX Runtime: what serving uses where the benchmark found it faster ---------------------
def onnx_path(ckpt) -> Path:
    """Where a checkpoint's ONNX export is cached, keyed on its weights' hash."""
    from bloodviz.checkpoints import weights_digest

    weights = ckpt.weights_path
    if weights is None:
        digest = hashlib.sha256(f"untrained {ckpt.model}".encode()).hexdigest()[:12]
    else:  # a sharded checkpoint: its index and every shard
        digest = weights_digest(weights)[:12]
    # v3: extra outputs, what the OOD score reads: the penultimate features and the first
    # convolution's pooled statistics (v2 had the former only)
    return cache_root() / "onnx" / ckpt.dataset_key / f"{ckpt.name}-{digest}-v3.onnx"


def export_onnx(ckpt, model: torch.nn.Module | None = None) -> Path:
    """Export (once, cached by weight hash) the checkpoint to ONNX with a dynamic batch axis."""
    import torch

    path = onnx_path(ckpt)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    model = (model or ckpt.cost_model()).eval()
    size = ckpt.preprocessing.size
    tmp = path.with_suffix(f".tmp{os.getpid()}.onnx")
    from bloodviz.ood import HEAD, STEM, FeatureTap, detector_layers

    try:
        layers = detector_layers(model, size, ckpt.preprocessing.num_classes)
    except ValueError:  # no final Linear layer: logits only
        layers = {}
    # ONNX output names of the parts (``features`` kept from v2 for the head)
    outputs = ["logits", *({HEAD: "features", STEM: "stem"}[name] for name in layers)]

    class WithFeatures(torch.nn.Module):
        """The network, also returning what the OOD score reads (one pass)."""

        def __init__(self):
            super().__init__()
            self.net = model
            self.tap = FeatureTap(model, layers)

        def forward(self, x):
            logits = self.net(x)
            return (logits, *(self.tap.features[name] for name in layers))

    # eval: the exporter puts the module back in its own mode afterwards, and a wrapper left
    # in training mode would switch the caller's network to batch statistics
    exported = WithFeatures().eval() if layers else model
    try:
        # The TorchScript exporter needs no extra package (the dynamo one needs onnxscript).
        torch.onnx.export(
            exported,
            torch.zeros(1, 3, size, size),
            str(tmp),
            dynamo=False,
            input_names=["image"],
            output_names=outputs,
            dynamic_axes={"image": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            opset_version=17,
        )
    finally:
        if layers:
            exported.tap.remove()
    os.replace(tmp, path)
    return path


def ensure_onnx(ckpt, timeout: float = 600) -> Path:
    """The checkpoint's cached ONNX file, exported first if needed. Where this process has not
    imported torch (the app), a child process exports it, so torch's ~600 MB never stay here."""
    path = onnx_path(ckpt)
    if path.exists():
        return path
    if "torch" in sys.modules:
        return export_onnx(ckpt)
    command = [sys.executable, "-m", "bloodviz", "export-onnx", str(ckpt.path)]
    try:
        done = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"exporting {ckpt.name} to ONNX took over {timeout:.0f} s") from exc
    if done.returncode != 0 or not path.exists():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"exporting {ckpt.name} to ONNX failed: {' | '.join(tail)}")
    return path


def onnx_session(path: Path, threads: int, *, lean: bool = False):
    """An ONNX Runtime CPU session. ``lean`` (the app, where many models share a small box)
    skips the layout optimisations that keep a second, re-blocked copy of the convolution
    weights: measured on malaria-64, resnet50's session takes 108 MB instead of 245 MB and
    resnet18's 55 MB instead of 148 MB, for 3-7 ms more per image."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if lean:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
