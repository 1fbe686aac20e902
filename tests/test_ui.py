"""The app's process-wide settings (bloodviz.ui), outside a running Streamlit app."""

import torch

from bloodviz import ui


def test_the_app_runs_pytorch_on_one_thread_per_session():
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        ui.one_torch_thread()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_the_app_keeps_triton_out_and_still_explains_and_exports(tmp_path):
    # a fresh process, as the app's: torchvision (through pytorch-grad-cam) reaches
    # torch._dynamo, which must work without Triton, and so must Grad-CAM and the ONNX export
    code = """
import sys
from pathlib import Path
import numpy as np
from bloodviz import ui
ui.keep_triton_out()
from bloodviz.checkpoints import open_checkpoint
from bloodviz.explain import Explainer
from bloodviz.inference import export_onnx
import torch._dynamo
ckpt = open_checkpoint(Path("checkpoints/pbc-64/lenet5"))
cell = np.full((64, 64, 3), 200, dtype=np.uint8)
explained = Explainer.from_checkpoint(ckpt).explain(cell, "gradcam")
print(sys.modules["triton"], explained.cam.shape, export_onnx(ckpt).stat().st_size > 0)
"""
    import os
    import subprocess
    import sys

    env = {**os.environ, "BLOODVIZ_CACHE": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["None", "(64,", "64)", "True"]
