"""Classify user images: safe decoding, framing, per-model and ensemble predictions, warnings.

Bad input raises :class:`InputError` with a message for that case; callers classify the rest of
a batch. Nothing here writes to disk except :func:`write_csv`.
"""

from __future__ import annotations

import csv
import io
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from bloodviz.checkpoints import Checkpoint
from bloodviz.inference import predict_probs, softmax
from bloodviz.preprocess import to_rgb
from bloodviz.recalibrate import RecalibrationError

MAX_UPLOAD_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # a 6000x6000 photo passes; decompression bombs do not
MIN_SIDE = 16  # BloodMNIST's 28 px cells pass; a 1x1 or 8x8 file cannot show a cell
MAX_ASPECT = 8  # a 640x480 field or a 320x240 crop pass; a 20000x3 strip does not
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
ALLOWED_FORMATS = {"JPEG", "PNG", "BMP", "TIFF", "WEBP", "MPO"}
# An image is flagged as unlike the training data when its top probability is below the
# confidence that this share of validation images reach.
OOD_VAL_QUANTILE = 0.05
# ...and whatever the validation data says, a top class under this is never presented as sure.
MIN_CONFIDENCE = 0.5
BOX_COLUMNS = ("box_x0", "box_y0", "box_x1", "box_y1")  # field framing: the cell in the image


class InputError(ValueError):
    """An upload that cannot be classified, with a message meant for the user."""


def read_image(data: bytes, name: str = "upload") -> Image.Image:
    """Decode one uploaded file, or raise :class:`InputError` saying what is wrong with it."""
    if len(data) == 0:
        raise InputError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise InputError(
            f"{name}: {len(data) / 2**20:.1f} MB is over the {MAX_UPLOAD_BYTES // 2**20} MB limit"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            fmt = image.format
            if image.width * image.height > MAX_PIXELS:
                raise InputError(
                    f"{name}: {image.width}x{image.height} pixels is too large to be a "
                    f"microscope image (limit {MAX_PIXELS / 1e6:.0f} megapixels)"
                )
            if fmt not in ALLOWED_FORMATS:
                raise InputError(
                    f"{name}: {fmt} files are not supported; use JPEG, PNG, BMP, TIFF or WebP"
                )
            frames = getattr(image, "n_frames", 1)
            if frames > 1 and fmt != "MPO":
                kind = "animated" if fmt in ("WEBP", "PNG", "GIF") else "multi-page"
                raise InputError(
                    f"{name}: an {kind} {fmt} with {frames} frames; upload single images"
                )
            image.load()
        short, long = sorted(image.size)
        if long > MAX_ASPECT * short:
            raise InputError(
                f"{name}: a {image.width}x{image.height} strip is not a microscope image "
                f"(its sides differ more than {MAX_ASPECT}-fold)"
            )
        if short < MIN_SIDE:
            raise InputError(
                f"{name}: {image.width}x{image.height} pixels is too small to show a cell "
                f"(at least {MIN_SIDE} pixels a side)"
            )
    except InputError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InputError(f"{name}: refused as a possible decompression bomb ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise InputError(
            f"{name}: not an image file (its bytes are not JPEG, PNG, BMP, TIFF or WebP)"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InputError(f"{name}: the image is truncated or corrupt ({exc})") from exc
    return image


def read_paths(paths: list[Path]) -> list[tuple[str, bytes | InputError]]:
    """The files to classify, as (name, bytes) or (name, the reason it cannot be read).

    A folder stands for the image files in it (and its subfolders), sorted; nothing given is
    dropped silently, so every path gets a result row.
    """
    files: list[tuple[str, bytes | InputError]] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                files.append((str(path), InputError(f"{path}: a folder with no image files")))
            files.extend(_read_one(p) for p in found)
        else:
            files.append(_read_one(path))
    return files


def _read_one(path: Path) -> tuple[str, bytes | InputError]:
    try:
        return str(path), path.read_bytes()
    except FileNotFoundError:
        return str(path), InputError(f"{path}: no such file")
    except OSError as exc:
        return str(path), InputError(f"{path}: cannot be read ({exc.strerror or exc})")


# "field": find the white cells in a smear field and classify each (bloodviz.localise)
Framing = Literal["cell", "full", "field"]


def default_framing(image: Image.Image, ckpt: Checkpoint) -> Framing:
    """'field' for an image the size of a smear field (shorter side >= 400 px, BCCD: 640x480)
    given to a white-cell model; 'full' for a PBC-sized image where the dataset crops its
    centre (360x363); else 'cell'."""
    from bloodviz.localise import CELL_SHARE, FIELD_MIN_SIDE

    if ckpt.dataset in CELL_SHARE and min(image.size) >= FIELD_MIN_SIDE:
        return "field"
    return _crop_framing(image, ckpt)


def _crop_framing(image: Image.Image, ckpt: Checkpoint) -> Framing:
    prep = ckpt.preprocessing
    if prep.field_crop_fraction < 1.0 and min(image.size) >= 300:
        return "full"
    return "cell"


Backend = Literal["auto", "onnx", "pytorch"]


class Runner:
    """Probabilities from a checkpoint, on ONNX Runtime or PyTorch.

    ``backend``: "onnx" always uses ONNX Runtime, so the process never imports torch (the app:
    about 600 MB lighter; the ONNX file is exported once, by a child process, and cached);
    "auto" uses it where the checkpoint's benchmark found it faster, else PyTorch (the CLI);
    "pytorch" never does. ONNX sessions may be shared between threads. ``lean``: ONNX Runtime
    sessions that take about half the memory for a few ms more per image (the app).
    """

    def __init__(
        self,
        ckpt: Checkpoint,
        backend: Backend = "auto",
        *,
        lean: bool = False,
        model=None,
        lock: threading.Lock | None = None,
    ):
        """``model``: the checkpoint's network already loaded by another user (the app's
        Grad-CAM copy), run on PyTorch as it is instead of loading a second copy; ``lock``:
        the lock that user holds for each pass through it (hooks on a shared model must not
        see another thread's pass)."""
        from bloodviz.inference import ensure_onnx, onnx_session

        if backend not in ("auto", "onnx", "pytorch"):
            raise ValueError(f"backend must be auto, onnx or pytorch, not {backend!r}")
        self.ckpt = ckpt
        self.backend = "pytorch"
        self._session = None
        self._model = None
        self._layers: dict[str, str] | None = None
        self._parts: list[str | None] | None = None
        self._lock = lock or threading.Lock()  # one pass at a time through a PyTorch model
        bench = ckpt.bench() or {}
        from bloodviz.imports import imported_onnx_file
        from bloodviz.ood import load_detector

        self.detector = load_detector(ckpt)
        if model is not None:
            self._model = model
            self._outputs = "logits"
            self._use_detector_layers()
            return

        imported = imported_onnx_file(ckpt)
        if imported is not None:  # an imported ONNX model has nothing else to run on
            self._session = onnx_session(imported, bench.get("threads", 1), lean=lean)
            self._input = self._session.get_inputs()[0].name
            self.backend = "onnxruntime"
            self._outputs = ckpt.run.imported.get("outputs", "logits")
            return
        self._outputs = "logits"
        if backend == "onnx" or (backend == "auto" and bench.get("use_onnx")):
            if not ckpt.has_weights:
                ckpt.load_model()  # raises CheckpointError saying why there are no weights
            self._session = onnx_session(ensure_onnx(ckpt), bench.get("threads", 1), lean=lean)
            self._input = self._session.get_inputs()[0].name
            self.backend = "onnxruntime"
        else:
            self._model = ckpt.load_model()
            self._use_detector_layers()

    def _use_detector_layers(self) -> None:
        if self.detector is not None:
            from bloodviz.ood import detector_layers_of

            self._layers = detector_layers_of(self.detector)

    @property
    def _output_parts(self) -> list[str | None]:
        """The OOD part each ONNX output carries, in order (None for the logits): the export
        names them "features" (head) and "stem". Read once per session."""
        if self._parts is None:
            from bloodviz.ood import HEAD, STEM

            names = {"features": HEAD, STEM: STEM}
            self._parts = [names.get(o.name) for o in self._session.get_outputs()]
        return self._parts

    def predict(
        self, images: np.ndarray, *, statistics=None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities and, where the checkpoint has a fitted detector, OOD scores: one
        pass through the network for both. ``statistics``: batch-norm statistics of another
        microscope's cells (:mod:`bloodviz.recalibrate`) to classify with (PyTorch only)."""
        prep = self.ckpt.preprocessing
        features: dict[str, np.ndarray] = {}
        if statistics is not None:
            from bloodviz.recalibrate import recalibrated

            model = self._recalibratable_model()
            with self._lock, recalibrated(model, statistics):
                return predict_probs(model, prep, images), None
        if self._session is None:
            if self._layers is None:
                with self._lock:
                    return predict_probs(self._model, prep, images), None
            from bloodviz.ood import logits_and_features

            with self._lock:
                logits, features = logits_and_features(
                    self._model, prep, images, layers=self._layers
                )
            probs = softmax(logits)
        else:
            outputs = self._session.run(None, {self._input: prep.to_array(images)})
            if self._outputs == "logits":
                probs = softmax(outputs[0])
            else:
                from bloodviz.imports import as_probabilities

                probs = as_probabilities(outputs[0], self._outputs)
            features = {part: value for part, value in zip(self._output_parts, outputs) if part}
        if self.detector is None or not set(self.detector.parts) <= set(features):
            return probs, None
        return probs, self.detector.score(features)

    def probs(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]

    def recalibrate(self, cells: np.ndarray) -> RecalibratedRunner:
        """This runner with batch norm re-estimated on ``cells`` (uint8 NHWC, framed for this
        checkpoint): :mod:`bloodviz.recalibrate`. Raises RecalibrationError saying why not."""
        from bloodviz.recalibrate import estimate_statistics

        model = self._recalibratable_model()
        statistics = estimate_statistics(model, self.ckpt.preprocessing, cells, lock=self._lock)
        return RecalibratedRunner(self, statistics)

    def _recalibratable_model(self):
        if self._model is None:
            raise RecalibrationError(
                f"{self.ckpt.name} runs on ONNX Runtime here; recalibration needs PyTorch"
            )
        return self._model


class RecalibratedRunner:
    """A PyTorch :class:`Runner` classifying with batch-norm statistics of another microscope.

    Its OOD scores come from the network as trained, which its detector was fitted on: an
    image unlike the training data is still flagged, however well recalibration hides it."""

    def __init__(self, runner: Runner, statistics):
        self.runner = runner
        self.statistics = statistics
        self.ckpt = runner.ckpt
        self.backend = f"{runner.backend}, recalibrated on {statistics.n_cells} cells"
        self.detector = runner.detector

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        probs, _ = self.runner.predict(images, statistics=self.statistics)
        scores = self.runner.predict(images)[1] if self.detector is not None else None
        return probs, scores

    def probs(self, images: np.ndarray) -> np.ndarray:
        return self.predict(images)[0]


class _CellRecorder:
    """Stands in for a runner to collect the cells each checkpoint would be shown."""

    detector = None

    def __init__(self, num_classes: int):
        self.num_classes = num_classes
        self.cells: list[np.ndarray] = []

    def predict(self, images: np.ndarray) -> tuple[np.ndarray, None]:
        self.cells.extend(images)
        return np.full((len(images), self.num_classes), 1.0 / self.num_classes), None


def framed_cells(
    files: list[tuple[str, bytes | InputError]],
    checkpoints: list[Checkpoint],
    framing: Framing | None = None,
) -> dict[str, np.ndarray]:
    """Checkpoint name -> every cell of ``files`` framed as :func:`classify` frames it for
    that checkpoint (each white cell of a field; unreadable files skipped)."""
    recorders = {c.name: _CellRecorder(c.preprocessing.num_classes) for c in checkpoints}
    classify(files, checkpoints, recorders, framing)
    return {
        name: np.stack(r.cells) if r.cells else np.zeros((0, 0, 0, 3), np.uint8)
        for name, r in recorders.items()
    }


def recalibrate(
    files: list[tuple[str, bytes | InputError]],
    checkpoints: list[Checkpoint],
    runners: dict,
    framing: Framing | None = None,
) -> tuple[dict, dict[str, str]]:
    """Runners recalibrated on the cells of ``files`` (:mod:`bloodviz.recalibrate`), for
    :func:`classify` on the same files: those that cannot be (no batch norm, ONNX Runtime, too
    few cells) stay as they were. Returns the runners and a note for each checkpoint saying
    what was done."""
    cells = framed_cells(files, checkpoints, framing)
    out, notes = dict(runners), {}
    for ckpt in checkpoints:
        try:
            out[ckpt.name] = runners[ckpt.name].recalibrate(cells[ckpt.name])
            notes[ckpt.name] = f"batch norm recalibrated on {len(cells[ckpt.name])} cells"
        except RecalibrationError as exc:
            notes[ckpt.name] = f"not recalibrated: {exc}"
    return out, notes


def confidence_threshold(ckpt: Checkpoint, quantile: float = OOD_VAL_QUANTILE) -> float:
    """Top-probability below which only ``quantile`` of the validation images fall."""
    if "val" not in ckpt.splits:
        return 0.5
    val = ckpt.predictions("val")
    return float(np.quantile(val.probs.max(1), quantile))


@dataclass
class ImageResult:
    name: str
    framing: str | None = None
    error: str | None = None
    per_model: dict = field(default_factory=dict)  # model -> probs
    warnings: dict = field(default_factory=dict)  # model -> list of messages
    ood: dict = field(default_factory=dict)  # model -> (score, threshold), where fitted
    ensemble: np.ndarray | None = None
    cell: np.ndarray | None = None  # the prepared cell the first model saw
    box: tuple[int, int, int, int] | None = None  # field framing: the cell's box in the image
    field_image: np.ndarray | None = None  # field framing: the whole image (its cells share it)

    def flagged(self, model: str) -> bool | None:
        """Whether ``model``'s OOD score is over its threshold (None where no detector is
        fitted); the ensemble is flagged when any member is."""
        if model in self.ood:
            score, threshold = self.ood[model]
            return score > threshold
        if model == "ensemble" and self.ood:
            return any(score > threshold for score, threshold in self.ood.values())
        return None


def classify(
    files: list[tuple[str, bytes | InputError]],
    checkpoints: list[Checkpoint],
    runners: dict[str, Runner] | None = None,
    framing: Framing | None = None,
) -> list[ImageResult]:
    """Classify each (name, bytes) with each checkpoint; bad files (or a read error given in
    place of the bytes) get an error, not an abort."""
    if not checkpoints:
        raise ValueError("choose at least one model")
    classes = checkpoints[0].preprocessing.class_names
    if any(c.preprocessing.class_names != classes for c in checkpoints):
        raise ValueError("the chosen models do not share one set of classes")
    runners = runners or {c.name: Runner(c) for c in checkpoints}
    thresholds = {c.name: confidence_threshold(c) for c in checkpoints}
    results = []
    for name, data in files:
        try:
            if isinstance(data, InputError):
                raise data
            image = read_image(data, name)
        except InputError as exc:
            results.append(ImageResult(name, error=str(exc)))
            continue
        results.extend(_classify_image(name, image, checkpoints, runners, thresholds, framing))
    return results


def _classify_image(name, image, checkpoints, runners, thresholds, framing) -> list[ImageResult]:
    """One result for a cell image; one per white cell found for a field."""
    chosen = {c.name: framing or default_framing(image, c) for c in checkpoints}
    if "field" not in chosen.values():
        return [_classify_crop(name, image, checkpoints, runners, thresholds, chosen)]

    from bloodviz.localise import CELL_SHARE, crop_cell, find_white_cells

    wrong = [c for c in checkpoints if c.dataset not in CELL_SHARE]
    if wrong:
        return [
            ImageResult(
                name,
                error=f"{name}: field framing finds white cells; {wrong[0].dataset_key} "
                "models do not classify white cells",
            )
        ]
    rgb = np.asarray(to_rgb(image))
    boxes = find_white_cells(rgb)
    if not boxes:
        if framing == "field":  # asked for: say so rather than guess
            return [
                ImageResult(
                    name,
                    framing="field",
                    error=f"{name}: no white cell found in the field (the localiser looks for "
                    "a large nucleus stained blue-purple, at BCCD's magnification)",
                )
            ]
        # chosen by size only: classify the image as its crop framing would
        fallback = {c.name: _crop_framing(image, c) for c in checkpoints}
        results = [_classify_crop(name, image, checkpoints, runners, thresholds, fallback)]
        for ckpt in checkpoints:
            note = (
                f"no white cell found in this field-sized image: framed as '{fallback[ckpt.name]}'"
            )
            results[0].warnings.setdefault(ckpt.name, []).insert(0, note)
        return results
    results = []
    for number, box in enumerate(boxes, start=1):
        corners = tuple(int(round(v)) for v in box.corners)
        result = ImageResult(f"{name} #cell{number}", framing="field", box=corners, field_image=rgb)
        for ckpt in checkpoints:
            crop = crop_cell(rgb, box, CELL_SHARE[ckpt.dataset])
            cell = ckpt.preprocessing.prepare(Image.fromarray(crop), "cell")
            _predict_cell(result, cell, ckpt, runners[ckpt.name], thresholds[ckpt.name])
        result.ensemble = np.mean(list(result.per_model.values()), axis=0)
        results.append(result)
    return results


def _classify_crop(name, image, checkpoints, runners, thresholds, chosen) -> ImageResult:
    """The image as one cell, framed for each checkpoint as ``chosen`` says."""
    result = ImageResult(name)
    for ckpt in checkpoints:
        result.framing = chosen[ckpt.name]
        cell = ckpt.preprocessing.prepare(image, chosen[ckpt.name])
        _predict_cell(result, cell, ckpt, runners[ckpt.name], thresholds[ckpt.name])
    result.ensemble = np.mean(list(result.per_model.values()), axis=0)
    return result


def _predict_cell(result: ImageResult, cell, ckpt, runner, confidence: float) -> None:
    """One model's prediction of one prepared cell, with its warnings, into ``result``."""
    if result.cell is None:
        result.cell = cell
    probs, scores = runner.predict(cell[None])
    probs = probs[0]
    result.per_model[ckpt.name] = probs
    notes = result.warnings.setdefault(ckpt.name, [])
    if scores is not None:
        threshold = runner.detector.threshold
        result.ood[ckpt.name] = (float(scores[0]), threshold)
        if scores[0] > threshold:
            notes.append(
                f"unlike the training data: its features' OOD score {scores[0]:.3g} is "
                f"above {threshold:.3g}, which 95% of validation cells stay under; do "
                "not trust this prediction"
            )
    if probs.max() < confidence:
        notes.append(
            f"low confidence ({probs.max():.0%}, below what 95% of validation images "
            f"reach: {confidence:.0%}); the image may be unlike the training data"
        )
    elif probs.max() < MIN_CONFIDENCE:
        notes.append(f"low confidence ({probs.max():.0%}): no class is likely")


def result_rows(
    results: list[ImageResult], class_names: tuple[str, ...], *, abstain: bool = False
) -> list[dict]:
    """One row per image and model (and 'ensemble' where several models were used).

    ``ood_score`` and ``flagged`` come from the checkpoint's fitted detector (empty where none
    is fitted; the ensemble is flagged when any member is). With ``abstain``, a flagged row's
    prediction is withheld: ``predicted`` is empty and ``abstained`` true."""
    rows = []
    for r in results:
        if r.error:
            rows.append(
                {"path": r.name, "model": "", "predicted": "", "probability": "", "error": r.error}
            )
            continue
        models = dict(r.per_model)
        if len(models) > 1:
            models["ensemble"] = r.ensemble
        for model, probs in models.items():
            top = int(np.argmax(probs))
            flagged = r.flagged(model)
            ood_score = round(r.ood[model][0], 3) if model in r.ood else ""
            withheld = abstain and flagged is True
            flagged = "" if flagged is None else flagged
            box = r.box or ("", "", "", "")
            row = {
                "path": r.name,
                "model": model,
                "predicted": "" if withheld else class_names[top],
                "probability": round(float(probs[top]), 6),
                "ood_score": ood_score,
                "flagged": flagged,
                "abstained": withheld,
                "framing": r.framing or "",
                **dict(zip(BOX_COLUMNS, box)),
                "error": "",
            }
            row.update({f"p_{c}": round(float(p), 6) for c, p in zip(class_names, probs)})
            rows.append(row)
    return rows


def typed_table(rows: list[dict]):
    """:func:`result_rows` as a DataFrame whose every column has one type: numbers with
    missing values for the empty cells, true / false / missing flags, text. Rows mix "" with
    numbers (an unreadable file has no probability), which Arrow, and so ``st.dataframe``,
    refuses."""
    import pandas as pd

    table = pd.DataFrame(rows)
    for column in table.columns:
        given = [v for v in table[column] if v != "" and v is not None]
        if given and all(isinstance(v, bool | np.bool_) for v in given):
            table[column] = pd.array(
                [None if v == "" else bool(v) for v in table[column]], dtype="boolean"
            )
        elif given and all(
            isinstance(v, int | float | np.integer | np.floating) and not isinstance(v, bool)
            for v in given
        ):
            table[column] = pd.to_numeric(table[column].replace("", np.nan))
        else:
            table[column] = table[column].astype(str)
    return table


def write_csv(path: Path, rows: list[dict], class_names: tuple[str, ...]) -> None:
    columns = [
        "path",
        "model",
        "predicted",
        "probability",
        *[f"p_{c}" for c in class_names],
        "ood_score",
        "flagged",
        "abstained",
        "framing",
        *BOX_COLUMNS,
        "error",
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
