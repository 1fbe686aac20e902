"""The literature: the five source studies, and every figure they printed for a model.

One record per study (:class:`Study`: its seed file, the data it used, class count, input
size) and the reported figures pointing at it by id. The model registry only builds and
trains networks; joins between models, studies and our checkpoints are lookups here, never
searches in display text. (timm keeps its ``default_cfgs`` apart from the model entry the
same way.) The seed files are in ``../shared/seeds/``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Study:
    id: str
    seed_file: str
    title: str
    # the bloodviz dataset that holds the study's data, and how the study described it
    dataset: str
    dataset_label: str
    classes: int
    input_size: int
    # the models whose registry entry comes from this study (others may report on them too)
    models: tuple[str, ...]


STUDIES: dict[str, Study] = {
    s.id: s
    for s in (
        Study(
            "000",
            "000_e498d33e13dfbf2a.txt",
            "LeNet-5, AlexNet, ResNet50, InceptionResNetV2, InceptionV3, SupCon",
            "blood-cells",
            "Kaggle blood-cells 120x120",
            4,
            120,
            ("alexnet000", "inception_resnet_v2", "lenet5", "resnet50", "supcon_resnet18"),
        ),
        Study(
            "001",
            "001_a6a249ec1b9073c2.txt",
            "ResNet50 + dense head, EfficientNet, InceptionV3",
            "blood-cells",
            "Kaggle blood-cells",
            4,
            64,
            ("efficientnet_b0", "resnet50_head001"),
        ),
        Study(
            "002",
            "002_015e41b8e293e97d.txt",
            "BloodMNIST: CNN ladder, SE attention, ResNet, Inception-v3, VGG-16 variants",
            "pbc",
            "BloodMNIST 64x64",
            8,
            64,
            (
                "cnn002_2layer",
                "cnn002_3layer",
                "cnn002_4layer",
                "cnn002_bn",
                "cnn002_dropout",
                "cnn002_l2",
                "cnn002_se",
                "inception_v3",
                "resnet18",
                "vgg16_002",
                "vgg16_cbam",
                "vgg16_dropout",
                "vgg16_trimmed",
            ),
        ),
        Study(
            "003",
            "003_69a75d80641104dc.txt",
            "CNN, ResNet50 features + one-vs-one SVM, ResNet18, VGG16 transfer",
            "blood-cells",
            "Kaggle blood-cells",
            4,
            64,
            ("resnet50_svm", "vgg16"),
        ),
        Study(
            "004",
            "004_7237b6eba7baf1b4.txt",
            "Autoencoder, ResNet18, MyCNN v0-v20, ACNet, Inception-style towers",
            "blood-cells",
            "Kaggle blood-cells (study's own size)",
            4,
            64,
            (
                "acnet",
                "autoencoder",
                "inception_eff3",
                "inception_eff5",
                "inception_eff7",
                "mycnn_v11",
                "mycnn_v4",
                "mycnn_v9",
                "para_a",
                "para_b",
            ),
        ),
    )
}


@dataclass(frozen=True)
class Reported:
    """A number a study printed for a model, with the split it was measured on."""

    model: str
    study: str
    metric: str
    value: float
    split: str
    pretrained: bool = False
    note: str = ""
    # a figure on other data than the study's main set (study 003's malaria result)
    data: str = ""
    data_label: str = ""
    # what stays different however alike the runs are (e.g. the study's split of the data)
    protocol_gap: str = ""

    @property
    def dataset(self) -> str:
        """The study's data as the study named it."""
        return self.data_label or STUDIES[self.study].dataset_label

    @property
    def bloodviz_dataset(self) -> str:
        """The bloodviz dataset a like-for-like comparison uses."""
        return self.data or STUDIES[self.study].dataset


@dataclass(frozen=True)
class ReportedCost:
    """Cost figures a study printed, in the study's own units."""

    ms_per_step: float | None = None
    memory_mb: float | None = None
    parameters: int | None = None
    note: str = ""


REPORTED: tuple[Reported, ...] = (
    # study 000
    Reported("alexnet000", "000", "train_accuracy", 98.64, "train"),
    Reported("alexnet000", "000", "accuracy", 85.89, "validation"),
    Reported("alexnet000", "000", "loss", 0.6378, "validation", note="printed as '0.6378%'"),
    Reported("inception_resnet_v2", "000", "train_accuracy", 99.41, "train", pretrained=True),
    Reported(
        "inception_resnet_v2",
        "000",
        "accuracy",
        99.5,
        "validation",
        pretrained=True,
        note="study 000's best",
    ),
    Reported("inception_resnet_v2", "000", "loss", 0.0209, "validation", pretrained=True),
    Reported(
        "inception_v3", "000", "accuracy", 95.03, "validation", pretrained=True, note="study 000"
    ),
    Reported("lenet5", "000", "train_accuracy", 99.95, "train"),
    Reported("lenet5", "000", "accuracy", 77.51, "validation"),
    Reported("lenet5", "000", "loss", 0.97, "validation"),
    Reported("resnet50", "000", "train_accuracy", 97.46, "train", pretrained=True),
    Reported(
        "resnet50",
        "000",
        "accuracy",
        88.55,
        "validation",
        pretrained=True,
        note="ImageNet baseline",
    ),
    Reported("resnet50", "000", "loss", 0.33, "validation", pretrained=True),
    Reported("supcon_resnet18", "000", "train_accuracy", 99.06, "train"),
    Reported("supcon_resnet18", "000", "accuracy", 92.73, "validation"),
    Reported(
        "supcon_resnet18",
        "000",
        "loss",
        0.0273,
        "validation",
        note="SupCon loss, not cross-entropy",
    ),
    # study 001
    Reported(
        "efficientnet_b0",
        "001",
        "accuracy",
        88.31,
        "test",
        pretrained=True,
        note="n=2464; 'overfitting', discarded",
    ),
    Reported("inception_v3", "001", "accuracy", 82.75, "test", pretrained=True, note="study 001"),
    Reported("inception_v3", "001", "macro_f1", 83.33, "test", pretrained=True, note="study 001"),
    Reported(
        "resnet50_head001",
        "001",
        "accuracy",
        87.29,
        "test",
        pretrained=True,
        note="transfer learning, Adam",
    ),
    Reported(
        "resnet50_head001",
        "001",
        "macro_f1",
        87.65,
        "test",
        pretrained=True,
        note="printed 0.876473181098623",
    ),
    # study 002
    Reported("cnn002_3layer", "002", "accuracy", 88.07, "test", note="'Basic CNN 3 Layers'"),
    Reported("cnn002_3layer", "002", "f1_weighted", 88.07, "test", note="'Basic CNN 3 Layers'"),
    Reported("cnn002_4layer", "002", "accuracy", 88.78, "test", note="'Basic CNN 4 Layers'"),
    Reported("cnn002_4layer", "002", "f1_weighted", 88.77, "test", note="'Basic CNN 4 Layers'"),
    Reported(
        "cnn002_bn",
        "002",
        "accuracy",
        95.59,
        "test",
        note="'CNN 4 Layers with Batch Normalization'",
    ),
    Reported(
        "cnn002_bn",
        "002",
        "f1_weighted",
        95.51,
        "test",
        note="'CNN 4 Layers with Batch Normalization'",
    ),
    Reported(
        "cnn002_dropout", "002", "accuracy", 91.9, "test", note="section 1.2; weighted F1 0.9185"
    ),
    Reported(
        "cnn002_dropout",
        "002",
        "f1_weighted",
        91.85,
        "test",
        note="section 1.2; weighted F1 0.9185",
    ),
    Reported(
        "cnn002_l2",
        "002",
        "accuracy",
        91.11,
        "test",
        note="section 1.4, L2 1e-4; weighted F1 0.9116",
    ),
    Reported(
        "cnn002_l2",
        "002",
        "f1_weighted",
        91.16,
        "test",
        note="section 1.4, L2 1e-4; weighted F1 0.9116",
    ),
    Reported("cnn002_se", "002", "accuracy", 95.03, "test", note="'CNN with Attention L2'"),
    Reported("cnn002_se", "002", "f1_weighted", 95.01, "test", note="'CNN with Attention L2'"),
    Reported("inception_v3", "002", "accuracy", 88.02, "test", note="study 002, 10,313,800 params"),
    Reported("inception_v3", "002", "f1_weighted", 87.96, "test", note="study 002"),
    Reported("resnet18", "002", "accuracy", 95.67, "test", note="'Resnet SGD'"),
    Reported("resnet18", "002", "f1_weighted", 95.7, "test", note="'Resnet SGD'"),
    Reported("vgg16_002", "002", "accuracy", 95.03, "test", note="'VGG-16'"),
    Reported("vgg16_002", "002", "f1_weighted", 95.06, "test", note="'VGG-16'"),
    Reported(
        "vgg16_cbam", "002", "accuracy", 93.31, "test", note="section 3.2; weighted F1 0.9333"
    ),
    Reported(
        "vgg16_cbam", "002", "f1_weighted", 93.33, "test", note="section 3.2; weighted F1 0.9333"
    ),
    Reported(
        "vgg16_dropout", "002", "accuracy", 96.43, "test", note="'VGG-16 DL', the study's best"
    ),
    Reported(
        "vgg16_dropout", "002", "f1_weighted", 96.41, "test", note="'VGG-16 DL', the study's best"
    ),
    Reported("vgg16_trimmed", "002", "accuracy", 96.2, "test", note="'VGG-16 Rm'"),
    Reported("vgg16_trimmed", "002", "f1_weighted", 96.2, "test", note="'VGG-16 Rm'"),
    # study 003
    Reported(
        "resnet18",
        "003",
        "accuracy",
        99.08,
        "test",
        pretrained=True,
        note="study 003, transfer learning (train accuracy 99.87)",
    ),
    Reported(
        "resnet50_svm",
        "003",
        "accuracy",
        83.71,
        "test",
        pretrained=True,
        note="ImageNet ResNet50 features + SVM OvO",
    ),
    Reported(
        "resnet50",
        "003",
        "accuracy",
        85.16,
        "test",
        pretrained=True,
        note="study 003's malaria result: 'Transfer Learning on Resnet50 pretrained model'",
        data="malaria",
        data_label="NIH malaria cells (Kaggle copy)",
        protocol_gap="the study's split is not stated (the Kaggle copy has none; notebooks split "
        "it by cell), ours is by patient",
    ),
    # study 004
    Reported(
        "acnet",
        "004",
        "accuracy",
        80.7,
        "test",
        note="MyCNN v13 (ACB in parallel). The text's 'ACNet 85.9% / 66.2%' is v12, "
        "whose ACB ran in series",
    ),
    Reported(
        "acnet",
        "004",
        "accuracy",
        50.7,
        "test_simple",
        note="MyCNN v13 (ACB in parallel). The text's 'ACNet 85.9% / 66.2%' is v12, "
        "whose ACB ran in series",
    ),
    Reported(
        "autoencoder",
        "004",
        "accuracy",
        25.1,
        "test",
        note="Autoencoder_v1: predicted 'neutrophil' for all",
    ),
    Reported(
        "autoencoder",
        "004",
        "accuracy",
        18.3,
        "test_simple",
        note="Autoencoder_v1: predicted 'neutrophil' for all",
    ),
    Reported(
        "inception_eff3", "004", "accuracy", 73.0, "test", note="table 3, '3x3 effective size'"
    ),
    Reported(
        "inception_eff3",
        "004",
        "accuracy",
        63.4,
        "test_simple",
        note="table 3, '3x3 effective size'",
    ),
    Reported(
        "inception_eff5", "004", "accuracy", 87.0, "test", note="table 3, '5x5 effective size'"
    ),
    Reported(
        "inception_eff5",
        "004",
        "accuracy",
        78.9,
        "test_simple",
        note="table 3, '5x5 effective size'",
    ),
    Reported(
        "inception_eff7", "004", "accuracy", 88.0, "test", note="table 3, '7x7 effective size'"
    ),
    Reported(
        "inception_eff7",
        "004",
        "accuracy",
        85.9,
        "test_simple",
        note="table 3, '7x7 effective size'",
    ),
    Reported("mycnn_v11", "004", "accuracy", 88.2, "test", note="table 2"),
    Reported("mycnn_v11", "004", "accuracy", 78.9, "test_simple", note="table 2"),
    Reported("mycnn_v4", "004", "accuracy", 85.4, "test", note="table 2 (74.7% in the changelog)"),
    Reported(
        "mycnn_v4", "004", "accuracy", 74.6, "test_simple", note="table 2 (74.7% in the changelog)"
    ),
    Reported(
        "mycnn_v9", "004", "accuracy", 86.5, "test", note="table 2; the study's best on TEST_SIMPLE"
    ),
    Reported(
        "mycnn_v9",
        "004",
        "accuracy",
        84.5,
        "test_simple",
        note="table 2; the study's best on TEST_SIMPLE",
    ),
    Reported(
        "resnet18",
        "004",
        "accuracy",
        85.7,
        "test",
        note="study 004, torchvision resnet18 'imported as-is'",
    ),
    Reported("resnet18", "004", "accuracy", 25.4, "test_simple", note="study 004"),
)
REPORTED_COST: dict[str, ReportedCost] = {
    "alexnet000": ReportedCost(parameters=1413732),
    "cnn002_3layer": ReportedCost(
        ms_per_step=6.05,
        memory_mb=0.67,
        parameters=171624,
        note="0.67 MB in the table; 171,624 is our count that gives it (not printed)",
    ),
    "cnn002_4layer": ReportedCost(ms_per_step=6.65, memory_mb=0.51, parameters=130792),
    "cnn002_bn": ReportedCost(ms_per_step=8.85, memory_mb=2.39, parameters=626024),
    "cnn002_dropout": ReportedCost(parameters=549032),
    "cnn002_l2": ReportedCost(parameters=626024),
    "cnn002_se": ReportedCost(ms_per_step=15.3, memory_mb=1.1, parameters=287807),
    "lenet5": ReportedCost(parameters=1516952),
    "resnet18": ReportedCost(
        ms_per_step=10.35,
        memory_mb=42.71,
        parameters=11195016,
        note="Keras, hardware not stated; 'Execution Time (ms/step)' and 'Memory Size (MB)' "
        "(= fp32 weight size) of study 002's comparison table",
    ),
    "vgg16_002": ReportedCost(ms_per_step=21.58, memory_mb=22.08, parameters=5787560),
    "vgg16_cbam": ReportedCost(
        parameters=5800994, note="our CBAM placement gives a different count"
    ),
    "vgg16_dropout": ReportedCost(ms_per_step=21.75, memory_mb=22.08, parameters=5787560),
    "vgg16_trimmed": ReportedCost(ms_per_step=20.69, memory_mb=17.58, parameters=4607400),
}


def study_of(model: str) -> Study | None:
    """The study a registered model comes from (None for bloodviz's own baselines)."""
    return next((s for s in STUDIES.values() if model in s.models), None)


def reported_for(model: str) -> tuple[Reported, ...]:
    """Every figure the studies printed for ``model``, its own study's first."""
    home = study_of(model)
    rows = [r for r in REPORTED if r.model == model]
    return tuple(sorted(rows, key=lambda r: home is None or r.study != home.id))


def reported_cost(model: str) -> ReportedCost | None:
    return REPORTED_COST.get(model)
