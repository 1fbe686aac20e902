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
