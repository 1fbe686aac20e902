"""Training end to end on small real subsets: checkpoint, evaluate, verify, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from helpers import run_bloodviz, store_env, train_tiny

from bloodviz.checkpoints import open_checkpoint
from bloodviz.models import create_model, list_models, model_info

REPO = Path(__file__).resolve().parent.parent


def bloodviz(*args, env=None, timeout=600):
    return run_bloodviz(*args, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """cnn_baseline trained 2 epochs on 12 real PBC images a class at 28 px."""
    return train_tiny(tmp_path_factory, size=28, epochs=2, limit=12)


@pytest.mark.slow
@pytest.mark.train
def test_checkpoint_contents(trained):
    root, _ = trained
    ckpt = open_checkpoint(root / "pbc-28" / "cnn_baseline")
    assert ckpt.splits == ["test", "val"]
    test = ckpt.predictions("test")
    assert len(test.ids) == 96 and len(set(test.ids)) == 96
    assert np.allclose(test.probs.sum(1), 1, atol=1e-4)
    card = json.loads((ckpt.path / "run.json").read_text())
    for key in ("config", "hardware", "versions", "wall_time_s", "command", "started_at"):
        assert key in card
    run = ckpt.run
    assert run.config["seed"] == 0 and run.epochs_run == 2 and run.seed == 0
    assert run.to_dict() == card  # the typed card gives back exactly what was written
    assert "python -m bloodviz train" in run.command
    assert len(ckpt.history()) == 2
    assert ckpt.preprocessing.size == 28


@pytest.mark.slow
@pytest.mark.train
def test_evaluate_json_matches_cached_predictions(trained):
    root, env = trained
    result = bloodviz(
        "evaluate",
        "--dataset",
        "pbc",
        "--size",
        "28",
        "--model",
        "cnn_baseline",
        "--json",
        env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    frame = pd.read_csv(root / "pbc-28" / "cnn_baseline" / "predictions-test.csv")
    probs = frame.filter(like="p_").to_numpy()
    truth = frame["label"].map({c[2:]: i for i, c in enumerate(frame.filter(like="p_"))})
    assert report["n"] == 96
    assert report["accuracy"] == pytest.approx(np.mean(probs.argmax(1) == truth))
    assert 0 <= report["macro_f1"] <= 1
    text = bloodviz(
        "evaluate", "--dataset", "pbc", "--size", "28", "--model", "cnn_baseline", env=env
    )
    assert "confusion matrix" in text.stdout and "95% CI" in text.stdout


@pytest.mark.slow
@pytest.mark.train
def test_verify_passes_then_catches_a_tampered_cache(trained):
    root, env = trained
    args = ["evaluate", "--dataset", "pbc", "--size", "28", "--model", "cnn_baseline", "--verify"]
    ok = bloodviz(*args, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "verify: OK" in ok.stdout
    path = root / "pbc-28" / "cnn_baseline" / "predictions-test.csv"
    original = path.read_text()
    frame = pd.read_csv(path)
    cols = [c for c in frame.columns if c.startswith("p_")]
    frame.loc[0, cols] = frame.loc[0, cols].to_numpy()[::-1]
    frame.to_csv(path, index=False)
    try:
        bad = bloodviz(*args, env=env)
        assert bad.returncode == 1
        assert "verify: FAILED" in bad.stdout
    finally:
        path.write_text(original)


@pytest.mark.slow
@pytest.mark.train
def test_killed_training_resumes_losing_at_most_one_epoch(tmp_path):
    env = store_env(tmp_path / "ck", tmp_path / "runs")
    args = [
        "train",
        "--model",
        "cnn_baseline",
        "--dataset",
        "pbc",
        "--size",
        "64",
        "--epochs",
        "4",
        "--limit-per-class",
        "60",
        "--precision",
        "fp32",
        "--quiet",
    ]
    state = tmp_path / "runs" / "pbc-64" / "cnn_baseline" / "state.pt"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bloodviz", *args],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not state.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert state.exists(), proc.stderr.read()
    saved = torch.load(state, weights_only=True)
    assert saved["epoch"] < 4, "the run finished before it could be killed"
    done = saved["epoch"]
    assert not (tmp_path / "ck" / "pbc-64" / "cnn_baseline").exists()

    result = bloodviz(*args, env=env)
    assert result.returncode == 0, result.stderr
    assert f"resuming from {state}: {done} of 4 epoch(s) done" in result.stdout
    history = pd.read_csv(tmp_path / "ck" / "pbc-64" / "cnn_baseline" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    for row in range(done):  # finished epochs were kept, not trained again
        assert history.loc[row, "val_accuracy"] == pytest.approx(
            saved["history"][row]["val_accuracy"]
        )
    assert not state.exists()

    again = bloodviz(*args[:-1], "--lr", "0.1", "--quiet", env=env)
    assert again.returncode == 0  # no partial state left: a new run simply starts
    # a partial run with other settings is refused, not silently mixed
    torch.save(saved, state)
    mixed = bloodviz(*args[:-1], "--lr", "0.5", "--quiet", env=env)
    assert mixed.returncode == 2 and "--fresh" in mixed.stderr


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_trains_a_step(name):
    """Forward and backward at the study's input size and at pbc's 64 px, on CPU."""
    info = model_info(name)
    for size in sorted({64, info.default_size}):
        model = create_model(name, num_classes=8, in_size=size)
        out = model(torch.randn(2, 3, size, size))
        # an SVM model's network is its feature extractor (ResNet-50's 2048 pooled features)
        assert out.shape == ((2, 2048) if info.trainer == "svm" else (2, 8))
        out.sum().backward()
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_which_weights_are_not_committed():
    from bloodviz.checkpoints import why_not_shipped

    assert why_not_shipped(49.9, "fp16", False) == ""
    assert why_not_shipped(109.2, "fp16", False) == ""  # sharded, not kept back
    assert "CPU-budget run" in why_not_shipped(8.0, "fp16", True)


@pytest.mark.slow
@pytest.mark.train
def test_a_cpu_budget_run_makes_a_predictions_only_checkpoint(tmp_path, monkeypatch, data_root):
    """A CPU-budget run (--train-subset) trains on fewer images but evaluates on whole splits;
    its weights stay under runs/, the card says why, the store still serves predictions and
    metrics, and asking for the network says what is missing."""
    import bloodviz.train as train_module
    from bloodviz.checkpoints import CheckpointError
    from bloodviz.compare import leaderboard
    from bloodviz.tables import checkpoint_table

    config = train_module.TrainConfig.for_model(
        "cnn_baseline", "pbc", size=28, epochs=1, limit_per_class=4, train_limit_per_class=2
    )
    out = train_module.train(
        config, str(data_root), tmp_path / "ck", tmp_path / "runs", progress=False, log=str
    )
    ckpt = open_checkpoint(out)
    assert ckpt.run.n_samples == {"train": 16, "val": 32, "test": 32}
    assert not (out / "model.safetensors").exists()
    local = tmp_path / "runs" / "pbc-28" / "cnn_baseline" / "model.safetensors"
    assert local.exists() and "CPU-budget run" in ckpt.run.weights_not_shipped
    monkeypatch.setenv("BLOODVIZ_RUNS", str(tmp_path / "runs"))
    assert ckpt.has_weights and ckpt.load_model() is not None  # the local copy serves here
    local.unlink()
    assert not ckpt.has_weights
    with pytest.raises(CheckpointError, match="predictions-only"):
        ckpt.load_model()
    assert ckpt.cost_model()(torch.zeros(1, 3, 28, 28)).shape == (1, 8)
    assert ckpt.predictions("test").probs.shape == (32, 8)
    assert checkpoint_table(tmp_path / "ck")["weights"].str.startswith("predictions only").all()
    assert leaderboard([ckpt], "test")["weights"].tolist() == ["predictions only"]


@pytest.mark.parametrize("name,count", [("lenet5", 1_516_952), ("alexnet000", 1_413_732)])
def test_study_000_models_match_printed_parameter_counts(name, count):
    model = create_model(name, num_classes=4, in_size=120)
    assert sum(p.numel() for p in model.parameters()) == count


@pytest.mark.slow
@pytest.mark.train
def test_sweep_trains_then_skips_up_to_date(tmp_path):
    env = store_env(tmp_path / "ck", tmp_path / "runs")
    args = [
        "sweep",
        "--dataset",
        "pbc",
        "--size",
        "28",
        "--models",
        "cnn_baseline",
        "lenet5",
        "--epochs",
        "1",
        "--limit-per-class",
        "4",
    ]
    first = bloodviz(*args, env=env)
    assert first.returncode == 0, first.stderr
    assert "cnn_baseline     trained" in first.stdout and "lenet5           trained" in first.stdout
    second = bloodviz(*args, env=env)
    assert "cnn_baseline     up to date" in second.stdout
    third = bloodviz(*args[:-1], "5", env=env)  # other settings: trained again
    assert "lenet5           trained" in third.stdout


def test_runs_saved_before_a_new_setting_stay_resumable():
    from bloodviz.runcard import TrainConfig

    config = TrainConfig.for_model("cnn_baseline", "pbc", size=64)
    current = config.resume_key()
    older = {k: v for k, v in current.items() if k != "pretrained"}  # saved before --pretrained
    assert config.matches(older)
    assert not config.matches({**older, "lr": 1.0})
    assert not TrainConfig.for_model("cnn_baseline", "pbc", size=64, pretrained=True).matches(older)


def test_durations_read_as_seconds():
    from bloodviz.runcard import parse_duration

    assert parse_duration("45m") == 2700
    assert parse_duration("1h30m") == 5400
    assert parse_duration("900") == 900
    for bad in ("soon", "45x", "-5", "0"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_epochs_planned_to_fill_the_budget():
    from bloodviz.train import plan_epochs

    # 100 steps of 0.5 s plus 10 s of validation = 60 s an epoch; 600 s left -> 10 epochs
    assert plan_epochs(660, 60, 0.5, 100, 10, cap=30) == 10
    assert plan_epochs(660, 60, 0.5, 100, 10, cap=4) == 4  # --epochs caps it
    assert plan_epochs(30, 0, 0.5, 100, 10, cap=30) == 1  # always at least one epoch


@pytest.mark.slow
@pytest.mark.train
def test_a_time_budget_plans_the_run_and_the_card_records_it(tmp_path, data_root):
    """--time-budget: the run's length comes from its first steps' speed, the schedule ends
    at the planned epoch, and the card says how many were planned and run; 'auto' precision
    on a CPU records what its probe measured."""
    from bloodviz.fit import fit
    from bloodviz.runcard import TrainConfig

    cap = 100_000  # far more epochs than 3 s allow: the budget decides
    config = TrainConfig.for_model(
        "cnn_baseline",
        "pbc",
        size=28,
        epochs=cap,
        limit_per_class=8,
        time_budget="3s",
        batch_size=16,
        patience=cap,
    )
    messages = []
    out = fit(
        config,
        str(data_root),
        tmp_path / "ck",
        tmp_path / "runs",
        progress=False,
        log=messages.append,
    )
    run = open_checkpoint(out).run
    assert any(m.startswith("time budget 3s:") for m in messages)
    assert 1 <= run.epochs_planned < cap and run.epochs_run == run.epochs_planned
    history = pd.read_csv(out / "history.csv")
    assert history["lr"].iloc[-1] < 1e-6 * config.lr  # the schedule decayed to its end
    assert run.train_time_s < 3 * 3  # spent about the budget, not the cap
    assert set(run.precision_probe) == {"fp32+cl", "bf16+cl"}
    faster = max(run.precision_probe, key=run.precision_probe.get)
    assert run.precision == ("bf16" if faster == "bf16+cl" else "fp32")


@pytest.mark.slow
def test_bench_train_prints_each_precision_side_by_side():
    result = run_bloodviz(
        "bench-train",
        "--models",
        "cnn002_4layer",
        "--steps",
        "1",
        "--batch-size",
        "8",
        "--size",
        "64",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["rows"][0]
    assert set(row["images_per_s"]) == {"fp32", "fp32+cl", "bf16+cl"}
    assert row["ratio_vs_old_default"]["bf16+cl"] == 1.0
    assert all(v > 0 for v in row["images_per_s"].values())


@pytest.mark.slow
@pytest.mark.train
def test_a_fine_tune_starts_from_the_named_checkpoint(trained, tmp_path, data_root):
    """--init-from: the run starts from that checkpoint's weights (with a learning rate of
    zero its parameters come out unchanged), the card records where it started, and a checkpoint of
    another architecture is refused before any training."""
    from safetensors.torch import load_file

    from bloodviz.checkpoints import CheckpointError
    from bloodviz.fit import fit
    from bloodviz.runcard import TrainConfig

    root, _ = trained
    settings = dict(size=28, epochs=1, limit_per_class=4, precision="fp32", lr=0.0)
    config = TrainConfig.for_model(
        "cnn_baseline", "pbc", init_from="cnn_baseline", variant="tuned", **settings
    )
    out = fit(config, str(data_root), root, tmp_path / "runs", progress=False, log=print)
    assert out.name == "cnn_baseline-tuned"
    source = load_file(root / "pbc-28" / "cnn_baseline" / "model.safetensors")
    tuned = load_file(out / "model.safetensors")
    for name, tensor in source.items():
        if name.endswith("num_batches_tracked"):  # counted on from the source's count
            assert tuned[name] > tensor > 0, name
        elif "running_" not in name:  # batch-norm statistics move even at a zero rate
            assert torch.allclose(tensor.float(), tuned[name].float(), atol=1e-3), name
    assert open_checkpoint(out).run.config["init_from"] == "cnn_baseline"
    other = TrainConfig.for_model("lenet5", "pbc", init_from="cnn_baseline", **settings)
    with pytest.raises(CheckpointError, match="is a cnn_baseline, not a lenet5"):
        fit(other, str(data_root), root, tmp_path / "runs", progress=False, log=print)


@pytest.mark.slow
@pytest.mark.train
def test_a_run_can_start_from_another_datasets_checkpoint_but_its_output_layer(
    trained, tmp_path, data_root
):
    """--init-from pbc-28/cnn_baseline on blood-cells: with a learning rate of zero every
    tensor but the output layer's (8 PBC classes there, 4 here) comes out as pbc's, the output
    layer is the new model's own, and a checkpoint of another architecture is refused."""
    from safetensors.torch import load_file

    from bloodviz.checkpoints import CheckpointError
    from bloodviz.fit import fit
    from bloodviz.runcard import TrainConfig

    root, _ = trained
    settings = dict(size=28, epochs=1, limit_per_class=4, precision="fp32", lr=0.0)
    config = TrainConfig.for_model(
        "cnn_baseline", "blood-cells", init_from="pbc-28/cnn_baseline", **settings
    )
    out = fit(config, str(data_root), root, tmp_path / "runs", progress=False, log=print)
    source = load_file(root / "pbc-28" / "cnn_baseline" / "model.safetensors")
    started = load_file(out / "model.safetensors")
    differing = []
    for name, tensor in source.items():
        if tensor.shape != started[name].shape:
            assert tensor.shape[0] == 8 and started[name].shape[0] == 4, name
            differing.append(name)
        elif "running_" not in name and not name.endswith("num_batches_tracked"):
            assert torch.allclose(tensor.float(), started[name].float(), atol=1e-3), name
    assert differing and all(name.startswith(differing[0].rsplit(".", 1)[0]) for name in differing)
    run = open_checkpoint(out).run
    assert run.config["init_from"] == "pbc-28/cnn_baseline"
    assert run.started_from == "pbc-28/cnn_baseline"
    assert run.pretrained_label == "pbc-28/cnn_baseline weights"
    other = TrainConfig.for_model(
        "lenet5", "blood-cells", init_from="pbc-28/cnn_baseline", **settings
    )
    with pytest.raises(CheckpointError, match="is a cnn_baseline, not a lenet5"):
        fit(other, str(data_root), root, tmp_path / "runs", progress=False, log=print)


def test_the_schedule_decays_to_zero_even_when_the_warm_up_is_as_long_as_the_run():
    """A one-epoch run with the default one-epoch warm-up: the warm-up takes a quarter of it
    and the rate still decays to (nearly) zero by the last step."""
    from bloodviz.train import WarmupCosine

    schedule = WarmupCosine(total_steps=40, warmup_steps=40)
    rates = [schedule(step) for step in range(40)]
    assert rates[0] < rates[9] == max(rates) == 1.0
    assert rates[-1] < 0.01 and all(a >= b for a, b in zip(rates[9:], rates[10:]))
    long_run = WarmupCosine(total_steps=400, warmup_steps=40)
    assert long_run(39) == 1.0 and long_run(20) == 21 / 40


@pytest.mark.slow
@pytest.mark.train
def test_an_epoch_leaves_out_a_last_batch_of_one_image(tmp_path, data_root):
    """40 training images in batches of 39 would end each epoch on one image, which batch
    norm after a flatten (cnn002_bn's head) cannot normalise in training: that batch is left
    out and the run finishes."""
    from bloodviz.fit import fit
    from bloodviz.runcard import TrainConfig

    config = TrainConfig.for_model(
        "cnn002_bn", "pbc", size=28, epochs=1, limit_per_class=5, batch_size=39, precision="fp32"
    )
    out = fit(config, str(data_root), tmp_path / "ck", tmp_path / "runs", progress=False, log=print)
    ckpt = open_checkpoint(out)
    assert ckpt.run.n_samples["train"] == 40 and ckpt.run.epochs_run == 1
