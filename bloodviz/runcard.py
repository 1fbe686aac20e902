"""What a run was asked to do (:class:`TrainConfig`) and what it did (:class:`RunCard`).

The run card is ``run.json`` in every checkpoint. Readers use :class:`RunCard`'s fields and
properties, never the raw dict, so each derived fact (pretrained or not, a CPU-budget subset,
how much training the run had) is decided in one place. Older cards load unchanged: fields
they lack take their defaults, and keys this version does not know are kept in ``extra``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

FORMAT = "bloodviz-checkpoint-1"


@dataclass
class TrainConfig:
    model: str
    dataset: str
    size: int | None = None
    epochs: int = 30
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.05
    grad_clip: float | None = None  # max global gradient norm; None = no clipping
    patience: int = 8
    augment: bool = True
    seed: int = 0
    limit_per_class: int | None = None
    # A CPU-budget run: fewer training images, but val and test stay whole, so its
    # numbers stay comparable with every other model's (unlike limit_per_class).
    train_limit_per_class: int | None = None
    pretrained: bool = False
    # "45m", "2h", "900" (seconds): plan the epochs so the schedule ends when it is spent
    time_budget: str | None = None
    precision: str = "auto"
    device: str = "auto"
    # stain and scale robustness (#16): RobustAugment's settings instead of the plain
    # flips/turns; a stain normalisation ("reinhard") applied to every image, in training and
    # at inference; and the name the checkpoint gets beside the plain one ("robust")
    robust_augment: dict | None = None
    stain_normalise: str | None = None
    variant: str | None = None
    # fine-tune: start from the weights of this checkpoint of the same model, dataset and size
    # (e.g. the plain run a robust variant adapts) instead of a random or ImageNet start
    init_from: str | None = None

    def __post_init__(self) -> None:
        if self.variant is None and (self.robust_augment is not None or self.stain_normalise):
            # a robust run never overwrites the plain checkpoint of the same model
            parts = ["robust"] if self.robust_augment is not None else []
            parts += [self.stain_normalise] if self.stain_normalise else []
            self.variant = "-".join(parts)

    @classmethod
    def for_model(cls, model: str, dataset: str, **settings) -> TrainConfig:
        """Defaults, then the model's recipe, then every setting given (``None`` = not given)."""
        from bloodviz.models import model_info

        chosen = {**model_info(model).recipe}
        chosen.update({k: v for k, v in settings.items() if v is not None})
        return cls(model=model, dataset=dataset, **chosen)

    @property
    def checkpoint_name(self) -> str:
        from bloodviz.checkpoints import checkpoint_name

        return checkpoint_name(self.model, self.pretrained, self.variant, self.seed)

    @property
    def train_limit(self) -> int | None:
        """Images a class the training split is cut to (a CPU-budget run's subset first)."""
        return self.train_limit_per_class or self.limit_per_class

    @property
    def cpu_budget(self) -> bool:
        return self.train_limit_per_class is not None

    def resume_key(self) -> dict:
        """Settings that must match for a saved state to be continued."""
        key = asdict(self)
        key.pop("device")
        key.pop("precision")
        return key

    def matches(self, saved: Mapping) -> bool:
        """Whether settings saved by an earlier run (a resume key, or a run card's config)
        are these, device and precision aside. A setting added to TrainConfig after that run
        counts as its default, so older partial runs and checkpoints stay current."""
        current = self.resume_key()
        defaults = {f.name: f.default for f in fields(self)}
        filled = {**{k: defaults[k] for k in current if k not in saved}, **saved}
        filled.pop("device", None)
        filled.pop("precision", None)
        return filled == current


def pretrained_label(pretrained: bool) -> str:
    """How the app and tables name a run's starting point."""
    return "ImageNet" if pretrained else "from scratch"


@dataclass(frozen=True)
class RunCard:
    """``run.json``: what was trained, on what, how, on which machine, and with what result."""

    dataset: str
    size: int
    model: str
    format: str = FORMAT
    display_name: str = ""
    family: str = ""
    pretrained: bool = False
    pretrained_source: str = ""
    adaptation: str = ""
    dataset_description: str = ""
    config: Mapping[str, Any] = field(default_factory=dict)
    device: str = ""
    precision: str = ""
    # train images/s a CPU run measured under each precision to choose one (``auto``)
    precision_probe: Mapping[str, float] = field(default_factory=dict)
    weights_dtype: str | None = None
    # why the weights are not in the store ('' = they are)
    weights_not_shipped: str = ""
    hardware: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, Any] = field(default_factory=dict)
    started_at: str = ""
    finished_at: str = ""
    wall_time_s: float | None = None
    train_time_s: float | None = None
    train_images_per_s: float | None = None
    epochs_run: int | None = None
    epochs_planned: int | None = None
    stopped_early: bool = False
    best_epoch: int | None = None
    best_val_accuracy: float | None = None
    n_samples: Mapping[str, int] = field(default_factory=dict)
    parameters: int | None = None
    command: str = ""
    # what a feature + SVM run used (study 003)
    features: str = ""
    classifier: str = ""
    # a model brought in rather than trained here: kind (onnx / predictions), file, sha256
    imported: Mapping[str, Any] = field(default_factory=dict)
    # keys written by other versions, kept as they are
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunCard:
        known = {f.name: f for f in fields(cls) if f.name != "extra"}
        values = {k: v for k, v in data.items() if k in known}
        for key, value in list(values.items()):
            if value is None and known[key].default == "":  # older cards wrote null for ''
                values[key] = ""
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
        optional = ("weights_not_shipped", "features", "classifier", "epochs_planned", "imported")
        for key in (*optional, "precision_probe"):
            if not data[key]:
                data.pop(key)  # only where they apply, as the cards have always been written
        return {**data, **dict(self.extra)}

    def replace(self, **changes) -> RunCard:
        from dataclasses import replace

        return replace(self, **changes)

    # -- derived facts, decided once -------------------------------------------------------
    @property
    def pretrained_label(self) -> str:
        """How the run started: ImageNet, from scratch, or another dataset's weights."""
        return (
            f"{self.started_from} weights"
            if self.started_from
            else pretrained_label(self.pretrained)
        )

    @property
    def started_from(self) -> str | None:
        """The other dataset's checkpoint a run started from (``pbc-64/vgg16``), else None;
        a fine-tune of the same dataset's checkpoint still counts as that one's start."""
        init_from = self.config.get("init_from") or ""
        return init_from if "/" in init_from else None

    @property
    def train_subset(self) -> int | None:
        """Training images a class of a CPU-budget run (``--train-subset``), else None."""
        return self.config.get("train_limit_per_class") or None

    @property
    def is_cpu_budget(self) -> bool:
        """Whether the run trained on a subset of the training split."""
        return bool(self.train_subset)

    @property
    def train_images(self) -> int | None:
        return self.n_samples.get("train")

    @property
    def seed(self) -> int:
        return int(self.config.get("seed", 0))

    @property
    def trained_on(self) -> str:
        return self.hardware.get("gpu") or self.device

    @property
    def training_summary(self) -> str:
        """How much training the run had, e.g. '2 ep on 800 train images (CPU-budget subset)'."""
        images = f"{self.train_images:,}" if self.train_images else "?"
        if self.epochs_run:
            text = f"{self.epochs_run} ep on {images} train images"
        else:
            text = f"fit on {images} images"
        if self.is_cpu_budget:
            text += " (CPU-budget subset)"
        return text


def run_identity(config: TrainConfig, dataset) -> dict[str, Any]:
    """The first fields of every run card: what was trained, on what, with which settings.

    ``dataset`` is a :class:`bloodviz.data.BloodDataset` (its name, size and description)."""
    from bloodviz.models import model_info

    info = model_info(config.model)
    return {
        "format": FORMAT,
        "dataset": dataset.name,
        "size": dataset.size,
        "model": config.model,
        "display_name": info.display_name,
        "family": info.family,
        "pretrained": config.pretrained,
        "pretrained_source": info.pretrained_source if config.pretrained else "",
        "adaptation": info.adaptation,
        "dataset_description": dataset.description,
        "config": asdict(config),
    }


def parse_duration(text: str) -> float:
    """Seconds in '45m', '2h', '1h30m', '90s' or a plain number of seconds."""
    import re

    cleaned = str(text).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(\.\d+)?", cleaned):
        seconds = float(cleaned)
    else:
        parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", cleaned)
        if not parts or "".join(n + u for n, u in parts) != cleaned:
            raise ValueError(f"cannot read {text!r} as a duration; use e.g. 45m, 2h, 1h30m, 900")
        seconds = sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)
    if seconds <= 0:
        raise ValueError(f"a time budget must be positive, not {text!r}")
    return seconds
