#!/usr/bin/env bash
# A venv with the CPU build of torch, as Streamlit Community Cloud installs, for measuring the
# app's memory the way it runs there (`VENV/bin/python -m tools.pagebench --each-page`).
#
# Development machines hold the CUDA build of torch 2.14.1 and, on their disk, only one CPU
# build: torch 2.13.0+cpu (/opt/wheels). Its torchvision (0.28.0) lies in the package mirror
# only as the CUDA build, whose C++ ops (nms, roi_align: torchvision.ops, which bloodviz never
# calls) cannot load against a CPU torch; its `_meta_registrations` then fails at import. This
# script makes those registrations conditional on the ops being loaded, in the venv's copy only.
# What it measures is therefore torch 2.13.0+cpu, torchvision 0.28.0 Python code without its
# compiled ops: close to, not the same as, Cloud's torch 2.14.1+cpu / torchvision 0.29.1+cpu.
set -euo pipefail
VENV=${1:-/tmp/cpuvenv}
TORCH_WHEEL=${TORCH_WHEEL:-/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl}
VISION_WHEEL=${VISION_WHEEL:-/opt/pypi-more/files/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl}
# the system's packages (streamlit, timm, grad-cam...) stay visible; the venv's torch wins
python -m venv --system-site-packages "$VENV"
PIP_CONSTRAINT= "$VENV/bin/pip" install -q --no-deps "$TORCH_WHEEL" "$VISION_WHEEL"
"$VENV/bin/python" - <<'PY'
import re
import sysconfig
from pathlib import Path

meta = Path(sysconfig.get_paths()["purelib"]) / "torchvision" / "_meta_registrations.py"
text = meta.read_text()
text = re.sub(
    r'^@torch\.library\.register_fake\(("torchvision::\w+")\)$',
    r"@(torch.library.register_fake(\1) if torchvision.extension._has_ops() else (lambda f: f))",
    text,
    flags=re.M,
)
meta.write_text(text)
PY
"$VENV/bin/python" -c "import torch, torchvision, timm; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
