import functools
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from bloodviz.checkpoints import (
    CheckpointError,
    list_checkpoints,
    load_weights,
    load_weights_into,
    model_shell,
    open_checkpoint,
    save_weights,
    weights_memory_bytes,
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

    # copied in place, tensor by tensor: the same weights; a file for another shape is refused
    fresh = create_model("cnn_baseline", num_classes=8)
    load_weights_into(fresh, path, expected_model="cnn_baseline")
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    with pytest.raises(CheckpointError, match="does not fit"):
        load_weights_into(create_model("cnn_baseline", num_classes=4), path, "cnn_baseline")
    with pytest.raises(CheckpointError, match="not 'resnet18'"):
        load_weights_into(fresh, path, expected_model="resnet18")
    with pytest.raises(CheckpointError, match="damaged"):
        load_weights_into(fresh, damaged)


def test_memory_estimate_read_from_the_header_matches_the_loaded_model(tmp_path):
    model = create_model("resnet18", num_classes=8)
    path = tmp_path / "model.safetensors"
    save_weights(model.state_dict(), path, "resnet18", fp16=True)
    loaded = sum(t.numel() * t.element_size() for t in load_weights(path).values())
    assert weights_memory_bytes(path) == loaded  # fp16 on disk, float32 in memory
    assert loaded > 1.9 * path.stat().st_size


def test_incomplete_folders_are_not_listed(tmp_path):
    (tmp_path / "pbc-64" / "half").mkdir(parents=True)
    (tmp_path / "pbc-64" / "half" / "model.safetensors").write_text("x")
    with pytest.raises(CheckpointError, match="incomplete"):
        open_checkpoint(tmp_path / "pbc-64" / "half")
    assert list_checkpoints(tmp_path) == []


def test_run_cards_of_every_age_load_typed_and_round_trip():
    """Older cards lack fields and wrote null for text; a newer version may add keys. All
    load, the derived facts are decided once, and what was written comes back."""
    from bloodviz.runcard import RunCard

    old = {
        "format": "bloodviz-checkpoint-1",
        "dataset": "pbc",
        "size": 64,
        "model": "resnet50",
        "pretrained": False,
        "weights_not_shipped": None,
        "hardware": {"cpu": "x", "gpu": "H100"},
        "device": "cuda",
        "epochs_run": 2,
        "n_samples": {"train": 800, "test": 3248},
        "config": {"seed": 3, "train_limit_per_class": 100},
        "from_a_later_version": {"kept": True},
    }
    card = RunCard.from_dict(old)
    assert card.weights_not_shipped == "" and card.pretrained_source == ""
    assert card.pretrained_label == "from scratch" and card.is_cpu_budget and card.seed == 3
    assert card.train_images == 800 and card.trained_on == "H100"
    assert card.training_summary == "2 ep on 800 train images (CPU-budget subset)"
    back = card.to_dict()
    assert back["from_a_later_version"] == {"kept": True}
    assert {k: v for k, v in back.items() if k in old and old[k] is not None} == {
        k: v for k, v in old.items() if v is not None
    }


def test_a_seed_other_than_0_names_its_own_checkpoint():
    from bloodviz.checkpoints import checkpoint_name
    from bloodviz.runcard import TrainConfig

    assert checkpoint_name("cnn_baseline") == "cnn_baseline"
    assert checkpoint_name("cnn_baseline", seed=2) == "cnn_baseline-seed2"
    assert checkpoint_name("resnet18", True, "robust", 1) == "resnet18@imagenet-robust-seed1"
    config = TrainConfig(model="inception_eff3", dataset="pbc", seed=1, stain_normalise="reinhard")
    assert config.checkpoint_name == "inception_eff3-reinhard-seed1"


@pytest.mark.slow
def test_every_model_loads_into_a_meta_built_shell_and_computes_the_same(tmp_path):
    """Checkpoints load into a shell built without initialising it (``model_shell``): for every
    registered model, the same outputs as the model whose weights were saved."""
    from bloodviz.models import list_models

    image = torch.rand(2, 3, 64, 64)
    for name in list_models():
        torch.manual_seed(0)
        model = create_model(name, num_classes=8, in_size=64).eval()
        path = tmp_path / f"{name}.safetensors"
        save_weights(model.state_dict(), path, name, fp16=False)
        shell = model_shell(functools.partial(create_model, name, num_classes=8, in_size=64))
        load_weights_into(shell, path, expected_model=name)
        shell.eval()
        assert not any(t.is_meta for t in [*shell.parameters(), *shell.buffers()]), name
        with torch.no_grad():
            torch.testing.assert_close(shell(image), model(image), msg=name)


def test_weights_over_the_limit_are_sharded_and_read_back_as_one(tmp_path):
    """Over ``max_file_mb`` the weights are Hugging Face's layout (numbered shards, each under
    the limit, plus an index naming each tensor's shard), read back as one file; a missing,
    swapped or foreign shard, a damaged index and one naming a file outside its folder are
    refused."""
    import shutil

    from bloodviz.checkpoints import remove_weights, weights_entry, weights_files

    model = create_model("resnet18", num_classes=8)
    single = tmp_path / "single" / "model.safetensors"
    single.parent.mkdir()
    assert save_weights(model.state_dict(), single, "resnet18", fp16=True) == single
    folder = tmp_path / "sharded"
    folder.mkdir()
    index = save_weights(
        model.state_dict(), folder / "model.safetensors", "resnet18", fp16=True, max_file_mb=8
    )
    assert index.name == "model.safetensors.index.json" and weights_entry(folder) == index
    shards = weights_files(index)[1:]
    assert len(shards) >= 3 and shards[0].name == f"model-00001-of-{len(shards):05d}.safetensors"
    assert all(shard.stat().st_size <= 8e6 for shard in shards)
    assert not (folder / "model.safetensors").exists()
    expected = load_weights(single)
    state = load_weights(index, expected_model="resnet18")
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[k], expected[k]) for k in expected)
    fresh = create_model("resnet18", num_classes=8)
    load_weights_into(fresh, index, expected_model="resnet18")
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())
    assert weights_memory_bytes(index) == weights_memory_bytes(single)
    with pytest.raises(CheckpointError, match="not 'resnet50'"):
        load_weights(index, expected_model="resnet50")

    def broken(name: str) -> Path:
        copy = tmp_path / name
        shutil.copytree(folder, copy)
        return copy

    missing = broken("missing")
    (missing / shards[1].name).unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(missing / index.name)
    swapped = broken("swapped")
    (swapped / shards[0].name).write_bytes(shards[1].read_bytes())
    with pytest.raises(CheckpointError, match="does not hold what"):
        load_weights(swapped / index.name)
    foreign = broken("foreign")
    save_file(load_weights(shards[0]), str(foreign / shards[0].name))  # no bloodviz metadata
    with pytest.raises(CheckpointError, match="other weights|not a bloodviz"):
        load_weights(foreign / index.name)
    damaged = broken("damaged")
    (damaged / index.name).write_text("{not json")
    with pytest.raises(CheckpointError, match="damaged or not a weights index"):
        load_weights(damaged / index.name)
    outside = broken("outside")
    data = json.loads((outside / index.name).read_text())
    first = next(iter(data["weight_map"]))
    data["weight_map"][first] = "../single/model.safetensors"
    (outside / index.name).write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="not a shard file beside it"):
        load_weights(outside / index.name)
    remove_weights(folder)
    assert list(folder.iterdir()) == []


def test_the_weights_digest_is_remembered_until_a_file_changes(tmp_path, monkeypatch):
    """A head's check against its feature network reads the network's weights once, not on
    every load; rewriting any shard gives the new digest."""
    import hashlib
    import os

    from bloodviz import checkpoints

    model = create_model("cnn_baseline", num_classes=8)
    index = save_weights(
        model.state_dict(), tmp_path / "model.safetensors", "cnn_baseline", False, max_file_mb=0.5
    )
    files = checkpoints.weights_files(index)
    expected = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert checkpoints.weights_digest(index) == expected
    opened = []
    real_open = open
    monkeypatch.setattr(
        "builtins.open", lambda f, *a, **k: opened.append(f) or real_open(f, *a, **k)
    )
    assert checkpoints.weights_digest(index) == expected
    assert not [f for f in opened if Path(f).suffix == ".safetensors"]
    monkeypatch.undo()
    last = files[-1]
    data = bytearray(last.read_bytes())
    data[-1] ^= 0xFF  # a tensor's last byte, same size
    last.write_bytes(bytes(data))
    stamp = last.stat().st_mtime_ns + 10**9  # a coarse clock must still see the change
    os.utime(last, ns=(stamp, stamp))
    changed = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    assert changed != expected and checkpoints.weights_digest(index) == changed


def test_a_checkpoint_over_the_limit_ships_sharded_and_loads(tmp_path, monkeypatch):
    """write_checkpoint shards weights over the per-file limit instead of keeping them off the
    store; the checkpoint loads, sizes and hashes them as one."""
    import numpy as np

    import bloodviz.checkpoints as checkpoints
    from bloodviz.checkpoints import Predictions, write_checkpoint
    from bloodviz.inference import onnx_path
    from bloodviz.preprocess import Preprocessing
    from bloodviz.runcard import RunCard

    monkeypatch.setattr(checkpoints, "MAX_SHIPPED_MB", 0.4)
    monkeypatch.setenv("BLOODVIZ_RUNS", str(tmp_path / "runs"))
    model = create_model("cnn_baseline", num_classes=8, in_size=28)
    classes = tuple(f"c{i}" for i in range(8))
    probs = np.full((8, 8), 1 / 8)
    preds = Predictions(np.array([f"s{i}" for i in range(8)]), np.arange(8), probs, classes)
    out = write_checkpoint(
        tmp_path / "pbc-28" / "cnn_baseline",
        run=RunCard(dataset="pbc", size=28, model="cnn_baseline"),
        preprocessing=Preprocessing(size=28, class_names=classes),
        predictions={"test": preds},
        metrics={},
        weights=model.state_dict(),
    )
    ckpt = open_checkpoint(out)
    assert ckpt.weights_path.name == "model.safetensors.index.json"
    assert ckpt.predictions_only_reason == "" and ckpt.weights_bytes > 4e5
    loaded = ckpt.load_model()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert ckpt.memory_bytes == sum(
        t.numel() * (4 if t.is_floating_point() else t.element_size())
        for t in model.state_dict().values()
    )
    assert onnx_path(ckpt).name.startswith("cnn_baseline-")
