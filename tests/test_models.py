"""The zoo's architectures: printed parameter counts, study-specific losses, --pretrained."""

import pytest
import torch
from helpers import run_bloodviz, store_env

from bloodviz.checkpoints import find_checkpoint
from bloodviz.literature import reported_cost
from bloodviz.models import create_model
from bloodviz.models.pretrained import PretrainedUnavailable
from bloodviz.models.study002 import keras_total
from bloodviz.models.supcon import supcon_loss
from bloodviz.runcard import TrainConfig

# study 002 printed these Keras totals for BloodMNIST at 64 px, 8 classes
PRINTED_002 = {
    "cnn002_4layer": 130_792,
    "cnn002_dropout": 549_032,
    "cnn002_bn": 626_024,
    "cnn002_l2": 626_024,
    "cnn002_se": 287_807,
    "vgg16_002": 5_787_560,
    "vgg16_dropout": 5_787_560,
    "vgg16_trimmed": 4_607_400,
}


@pytest.mark.parametrize("name", sorted(PRINTED_002))
def test_study_002_parameter_counts_equal_the_printed_ones(name):
    assert keras_total(create_model(name, num_classes=8, in_size=64)) == PRINTED_002[name]
    assert reported_cost(name).parameters == PRINTED_002[name]


def test_study_000_tables_at_120_px_and_4_classes():
    assert keras_total(create_model("lenet5", 4, 120)) == 1_516_952
    assert keras_total(create_model("alexnet000", 4, 120)) == 1_413_732


def test_l2_penalty_is_lambda_times_squared_kernels():
    model = create_model("cnn002_l2", 8, 64)
    kernels = [
        m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
    ]
    expected = 1e-4 * sum(float(w.detach().pow(2).sum()) for w in kernels)
    assert float(model.auxiliary_loss().detach()) == pytest.approx(expected, rel=1e-5)
    assert create_model("cnn002_bn", 8, 64).auxiliary_loss() is None


def test_autoencoder_adds_reconstruction_loss_only_in_training():
    model = create_model("autoencoder", 4, 64)
    x = torch.randn(3, 3, 64, 64)
    model.train()(x)
    loss = model.auxiliary_loss()
    assert loss is not None and float(loss) > 0
    assert model.auxiliary_loss() is None  # consumed
    model.eval()(x)
    assert model.auxiliary_loss() is None


def test_supcon_loss_prefers_clustered_classes():
    labels = torch.tensor([0, 0, 1, 1])
    clustered = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    mixed = torch.tensor([[1.0, 0], [0, 1.0], [0.9, 0.1], [0.1, 0.9]])
    assert supcon_loss(clustered, labels) < supcon_loss(mixed, labels)
    # hand check for two pairs at temperature 1: anchor 0's positive is 1 among {1, 2, 3}
    z = torch.nn.functional.normalize(clustered, dim=1)
    s = z @ z.T
    anchor0 = -(s[0, 1] - torch.logsumexp(s[0, 1:], 0))
    per_anchor = [anchor0]
    for i, j in ((1, 0), (2, 3), (3, 2)):
        others = [k for k in range(4) if k != i]
        per_anchor.append(-(s[i, j] - torch.logsumexp(s[i, others], 0)))
    expected = torch.stack(per_anchor).mean()
    assert float(supcon_loss(clustered, labels, temperature=1.0)) == pytest.approx(float(expected))


def test_supcon_probe_does_not_train_the_encoder():
    model = create_model("supcon_resnet18", 8, 64).train()
    logits = model(torch.randn(4, 3, 64, 64))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())
    model.zero_grad()
    model(torch.randn(4, 3, 64, 64))
    model.auxiliary_loss(torch.tensor([0, 0, 1, 1])).backward()
    assert any(p.grad is not None for p in model.encoder.parameters())


def test_recipe_defaults_and_explicit_settings():
    assert TrainConfig.for_model("vgg16_dropout", "pbc").lr == 5e-4
    assert TrainConfig.for_model("vgg16_dropout", "pbc", lr=1e-3).lr == 1e-3
    assert TrainConfig.for_model("cnn_baseline", "pbc", lr=None).lr == 2e-3


@pytest.mark.slow
@pytest.mark.train
def test_pretrained_is_never_silent(tmp_path, monkeypatch):
    monkeypatch.setenv("BLOODVIZ_PRETRAINED_DIR", str(tmp_path / "none"))
    with pytest.raises(PretrainedUnavailable, match="BLOODVIZ_PRETRAINED_DIR"):
        create_model("resnet18", 8, 64, pretrained=True)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("cnn002_bn", 8, 64, pretrained=True)


@pytest.mark.slow
@pytest.mark.train
def test_pretrained_run_from_a_local_weights_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "weights"
    weights.mkdir()
    reference = timm.create_model("resnet18", pretrained=False)
    save_file(reference.state_dict(), weights / "resnet18.safetensors")
    env = {**store_env(tmp_path / "ck", tmp_path / "runs"), "BLOODVIZ_PRETRAINED_DIR": str(weights)}
    args = ["train", "--model", "resnet18", "--dataset", "pbc", "--epochs", "1"]
    args += ["--limit-per-class", "3", "--quiet"]
    run_bloodviz(*args, "--pretrained", env=env, check=True)
    ckpt = find_checkpoint("pbc", "resnet18@imagenet", root=tmp_path / "ck")
    assert ckpt.run.pretrained is True and ckpt.name == "resnet18@imagenet"
    model = ckpt.load_model()  # rebuilt with the ImageNet stem, no download
    assert model.conv1.kernel_size == (7, 7)
    # the from-scratch run goes beside it, not over it
    run_bloodviz(*args, env=env, check=True)
    scratch = find_checkpoint("pbc", "resnet18", root=tmp_path / "ck")
    assert scratch.run.pretrained is False and scratch.load_model().conv1.kernel_size == (3, 3)
    # without the file the run stops with the reason, and nothing is written
    env["BLOODVIZ_PRETRAINED_DIR"] = str(tmp_path / "empty")
    failed = run_bloodviz(*args, "--pretrained", "--fresh", env=env)
    assert failed.returncode == 2 and "could not be loaded" in failed.stderr


def test_any_timm_architecture_by_name():
    from bloodviz.models import model_info
    from bloodviz.models.timm_any import tokens_to_map

    cnn = model_info("timm:mobilenetv3_small_050")
    assert cnn.family == "timm" and cnn.target_layer and not cnn.cam_reshape
    assert "none needed" in cnn.adaptation
    out = create_model("timm:mobilenetv3_small_050", num_classes=8, in_size=64)(
        torch.zeros(2, 3, 64, 64)
    )
    assert out.shape == (2, 8)
    vit = model_info("timm:deit_tiny_patch16_224")
    # a transformer: its last block's norm, read as a map of its 4x4 patch tokens
    assert vit.target_layer == "blocks.11.norm1" and vit.cam_reshape == "tokens:1"
    assert "img_size=64" in vit.adaptation
    tokens = torch.arange(2 * 17 * 3, dtype=torch.float32).reshape(2, 17, 3)
    assert tokens_to_map(tokens, prefix=1).shape == (2, 3, 4, 4)
    with pytest.raises(KeyError, match="timm has no architecture .*convnext_giant_x.*similar"):
        model_info("timm:convnext_giant_x")
    with pytest.raises(ValueError, match="cannot take 8 px cells"):
        create_model("timm:vit_tiny_patch16_224", num_classes=8, in_size=8)


@pytest.mark.slow
def test_a_timm_transformer_trains_and_explains(tmp_path):
    import numpy as np

    from bloodviz.checkpoints import list_checkpoints
    from bloodviz.explain import Explainer

    result = run_bloodviz(
        "train",
        "--model",
        "timm:deit_tiny_patch16_224",
        "--dataset",
        "pbc",
        "--epochs",
        "1",
        "--limit-per-class",
        "4",
        "--quiet",
        env=store_env(tmp_path / "ck", tmp_path / "runs"),
    )
    assert result.returncode == 0, result.stderr
    (ckpt,) = list_checkpoints(tmp_path / "ck")
    assert ckpt.name == "timm-deit_tiny_patch16_224"  # no colon in the store's paths
    assert ckpt.model == "timm:deit_tiny_patch16_224" and "img_size=64" in ckpt.run.adaptation
    explainer = Explainer.from_checkpoint(ckpt)
    cell = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    cam = explainer.explain(cell, "gradcam").cam
    assert cam.shape == (64, 64) and cam.max() > 0
