import json

import pytest
import torch
from safetensors.torch import save_file

from bloodviz.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_weights,
    open_checkpoint,
    save_weights,
    write_atomic,
)
from bloodviz.models import create_model


def _fill_ok(marker: str):
    def fill(folder):
        for name in ("model.safetensors", "preprocessing.json"):
            (folder / name).write_text(marker)
        (folder / "run.json").write_text(json.dumps({"marker": marker}))

    return fill


def test_atomic_write_failure_leaves_previous_checkpoint(tmp_path):
    final = tmp_path / "pbc-64" / "resnet18"
    write_atomic(final, _fill_ok("first"))
    assert json.loads((final / "run.json").read_text())["marker"] == "first"

    def crash(folder):
        (folder / "model.safetensors").write_text("half")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        write_atomic(final, crash)
    assert json.loads((final / "run.json").read_text())["marker"] == "first"
    assert (final / "model.safetensors").read_text() == "first"
    assert [p.name for p in final.parent.iterdir()] == ["resnet18"]

    def incomplete(folder):
        (folder / "model.safetensors").write_text("no run card")

    with pytest.raises(CheckpointError, match="did not produce"):
        write_atomic(tmp_path / "pbc-64" / "other", incomplete)
    assert not (tmp_path / "pbc-64" / "other").exists()
    write_atomic(final, _fill_ok("second"))
    assert json.loads((final / "run.json").read_text())["marker"] == "second"
    assert [p.name for p in final.parent.iterdir()] == ["resnet18"]


def test_weights_round_trip_and_refusals(tmp_path):
    model = create_model("cnn_baseline", num_classes=8)
    path = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), path, "cnn_baseline", fp16=True)
    state = load_weights(path, expected_model="cnn_baseline")
    assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    model.load_state_dict(state)

    with pytest.raises(CheckpointError, match="not 'resnet18'"):
        load_weights(path, expected_model="resnet18")
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a bloodviz checkpoint"):
        load_weights(foreign)
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="damaged"):
        load_weights(damaged)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(tmp_path / "absent.safetensors")


def test_incomplete_folders_are_not_listed(tmp_path):
    (tmp_path / "pbc-64" / "half").mkdir(parents=True)
    (tmp_path / "pbc-64" / "half" / "model.safetensors").write_text("x")
    with pytest.raises(CheckpointError, match="incomplete"):
        open_checkpoint(tmp_path / "pbc-64" / "half")
    assert list_checkpoints(tmp_path) == []
