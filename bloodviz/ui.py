"""Streamlit glue shared by the pages: cached loaders and the sidebar selection.

Kept apart from the engine so that everything else in ``bloodviz`` imports without Streamlit.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import threading
from pathlib import Path

import streamlit as st

from bloodviz.checkpoints import (
    Checkpoint,
    list_checkpoints,
    open_checkpoint,
    seed_representatives,
    store_fingerprint,
)
from bloodviz.modelcache import ModelCache

# What each page imports from the engine. Sessions run in threads: on a cold server a class
# opening the app at once imported these concurrently, and Python's per-module import locks
# gave one thread a half-initialised bloodviz.compare ("cannot import name 'filter_cells'").
# app.py imports a page's modules here, one thread at a time, before the page runs.
LIGHT_MODULES = (
    "bloodviz.compare",
    "bloodviz.plots",
    "bloodviz.metrics",
    "bloodviz.tables",
    "bloodviz.cellbank",
    "bloodviz.ensemble",
)
PAGE_MODULES = {
    "gradcam": (*LIGHT_MODULES, "bloodviz.explain"),
    "upload": (*LIGHT_MODULES, "bloodviz.predict"),
}
_import_lock = threading.Lock()
_imported: set[str] = set()


def import_page_modules(url_path: str) -> None:
    """Import the engine modules the page at ``url_path`` uses, serialised across sessions."""
    names = PAGE_MODULES.get(url_path, LIGHT_MODULES)
    if _imported.issuperset(names):
        return
    with _import_lock:
        for name in names:
            importlib.import_module(name)
            _imported.add(name)


# -- back and forward ---------------------------------------------------------------------------
# Streamlit (1.67) strips a page's bound parameters when another page opens, and its frontend
# pushes that stripped address as one more history entry of the old page before the new page's
# own entry. So the first Back lands on the old page without its choices (report model, tab...).
# Each session keeps every page's last choices; a history step onto one of the page's entries
# that carries none of them puts them back (replacing that stripped entry) and reruns.
GLOBAL_PARAMS = ("dataset", "models-")


def _page_params() -> dict[str, list[str]]:
    """The address's parameters that belong to the page (not the sidebar's dataset/models)."""
    return {
        k: st.query_params.get_all(k) for k in st.query_params if not k.startswith(GLOBAL_PARAMS)
    }


def restore_page_view(url_path: str) -> None:
    """On a Back/Forward step onto a stripped entry: the page's last choices, then a rerun."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    remembered = st.session_state.get("_page_views", {}).get(url_path)
    if not remembered or not getattr(ctx, "is_history_navigation", False) or _page_params():
        return
    for key in remembered:  # bound widgets seed from the address again on the rerun
        st.session_state.pop(key, None)
    st.query_params.update(remembered)
    st.rerun()


def remember_page_view(url_path: str) -> None:
    st.session_state.setdefault("_page_views", {})[url_path] = _page_params()


# memory for loaded networks (PyTorch models and ONNX sessions together), least recently used
# dropped first: torch's import takes ~500 MB of the 690 MB-2.7 GB that Streamlit Community
# Cloud gives an app, and one resnet50 takes 90 MB (twice, when it is classified on ONNX
# Runtime and explained on PyTorch). BLOODVIZ_MODEL_MEMORY_MB changes it for a larger machine.
MODEL_MEMORY_MB = int(os.environ.get("BLOODVIZ_MODEL_MEMORY_MB", "160"))


def limit_heap_arenas(count: int = 2) -> None:
    """Let glibc keep at most ``count`` heaps for the app's threads. Streamlit runs every rerun
    on a new thread, and glibc gives busy threads heaps of their own (up to 8 per core), each
    holding on to what it freed. A no-op where glibc is not the C library."""
    libc = _libc()
    if libc is not None:
        libc.mallopt(-8, count)  # M_ARENA_MAX


def release_freed_memory() -> None:
    """Hand memory freed while loading (ONNX export, weight conversion) back to the OS.

    glibc keeps freed heap for reuse; on a 1-2.7 GB Streamlit Cloud box that is ~100 MB per
    load that the app never needs again. A no-op where glibc is not the C library."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _libc():
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        if not (hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt")):
            return None  # not glibc
    except (OSError, TypeError):
        return None
    return libc


def _malloc_trim():
    libc = _libc()
    return None if libc is None else libc.malloc_trim


def release_after_page(url_path: str) -> None:
    """After a page that ran a network (Grad-CAM, uploads), give its freed activations and
    gradients back to the OS. Streamlit runs every rerun on a new thread and glibc keeps what
    each frees in its arenas: measured with pbc-64's six best models, 25 visits of the
    Grad-CAM page took the app from 1,318 to 1,910 MB resident, and stayed at 1,300 +- 20 MB
    with this trim after each."""
    if url_path in PAGE_MODULES:
        release_freed_memory()


@st.cache_data(show_spinner=False)
def checkpoint_paths(fingerprint: tuple) -> dict[str, list[str]]:
    """dataset key -> checkpoint folders, keyed on the store's fingerprint."""
    found: dict[str, list[str]] = {}
    for ckpt in list_checkpoints(fingerprint[0]):
        found.setdefault(ckpt.dataset_key, []).append(str(ckpt.path))
    return found


def version(path: str) -> int:
    """When the checkpoint at ``path`` (or its benchmark) was last written: part of every
    cache key below, so a checkpoint retrained or re-benchmarked while the app runs is read
    afresh."""
    stamps = []
    for name in ("run.json", "bench-cpu.json"):
        try:
            stamps.append((Path(path) / name).stat().st_mtime_ns)
        except OSError:
            stamps.append(0)
    return max(stamps)


@st.cache_resource(show_spinner=False)
def _checkpoint(path: str, written: int) -> Checkpoint:
    return open_checkpoint(path)


def checkpoint(path: str) -> Checkpoint:
    return _checkpoint(path, version(path))


@st.cache_resource(show_spinner=False)
def loaded_models() -> ModelCache:
    """The networks every session shares, within ``MODEL_MEMORY_MB``."""
    return ModelCache(MODEL_MEMORY_MB * 2**20, on_evict=release_freed_memory)


def runner(path: str, *, on_explainer: bool = False):
    """The checkpoint's ONNX Runtime classifier: classifying uploads never imports torch into
    the app's process. ``on_explainer``: a PyTorch classifier on the copy Grad-CAM loads
    instead, for a page that needs that copy anyway (the upload page's overlay): one copy of the
    network in memory, not two, and no reload of either on every rerun.

    Once any page has imported torch, every network is classified on a PyTorch copy (the one
    Grad-CAM has loaded, where it has: no ONNX export or session beside it): torch's
    memory is paid by then, the copy is the one a Grad-CAM of it would load, and a network not
    yet exported would otherwise be exported to ONNX in this process (``ensure_onnx`` exports
    in-process where torch is loaded), whose trace took the app from 1,180 to 1,486 MB
    for blood-cells-64 resnet50 in ``python -m tools.pagebench``."""
    # an imported ONNX model has no PyTorch weights: it runs on ONNX Runtime whatever is loaded
    on_torch = "torch" in sys.modules and checkpoint(path).has_weights
    if on_explainer or on_torch:  # a network Grad-CAM loaded is on_torch: torch is imported
        from bloodviz.predict import Runner

        loaded = explainer(path)
        return Runner(checkpoint(path), model=loaded.model, lock=loaded.lock)

    def load():
        from bloodviz.predict import Runner

        loaded = Runner(checkpoint(path), backend="onnx", lean=True)
        release_freed_memory()
        return loaded

    return _loaded(
        ("onnx", path, version(path)),
        load,
        "Loading model (its first use exports it to ONNX, a few seconds)…",
        checkpoint(path).memory_bytes,
    )


def recalibrated(inputs: list[tuple[str, bytes]], ckpts: list[Checkpoint], runners: dict, framing):
    """``runners`` recalibrated on the cells of ``inputs`` (:func:`bloodviz.predict.recalibrate`)
    and a note per model. A session keeps the batch-norm statistics of its last upload only
    (small: two vectors a layer), never a runner: that would pin a network the shared cache
    has dropped."""
    import hashlib

    from bloodviz.predict import RecalibratedRunner, recalibrate

    digest = hashlib.sha256()
    for name, data in inputs:
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    networks = tuple((str(c.path), version(str(c.path))) for c in ckpts)
    key = (digest.hexdigest(), str(framing), networks)
    kept = st.session_state.get("_recalibration")
    if kept is None or kept[0] != key:
        with st.spinner("Recalibrating batch norm on the uploaded cells…"):
            out, notes = recalibrate(inputs, ckpts, runners, framing)
        statistics = {n: r.statistics for n, r in out.items() if isinstance(r, RecalibratedRunner)}
        st.session_state["_recalibration"] = kept = (key, statistics, notes)
    _, statistics, notes = kept
    out = {
        name: RecalibratedRunner(r, statistics[name]) if name in statistics else r
        for name, r in runners.items()
    }
    return out, notes


def explainer(path: str):
    """The checkpoint's PyTorch network with its CAMs (gradients need PyTorch)."""

    def load():
        from bloodviz.explain import Explainer

        one_torch_thread()
        loaded = Explainer.from_checkpoint(checkpoint(path))
        release_freed_memory()
        return loaded

    return _loaded(
        ("torch", path, version(path)), load, "Loading model…", checkpoint(path).memory_bytes
    )


def keep_triton_out() -> None:
    """The app runs PyTorch eagerly and compiles nothing, yet torchvision's import reaches
    torch._dynamo, which loads Triton (the GPU kernel compiler) wherever it is installed: 84 MB
    resident with this machine's CUDA build of torch (Community Cloud's CPU build has no
    Triton). Marking it absent before that import keeps it out; dynamo then works without it,
    as on a CPU build."""
    if "triton" not in sys.modules:
        sys.modules["triton"] = None  # import fails; importlib.util.find_spec answers None


def one_torch_thread() -> None:
    """PyTorch in the app computes with one thread per session. Sessions run at once (a class),
    and two OpenMP threads per op on 2 busy cores spin against each other: with the other core
    busy, a resnet50 Grad-CAM with its ROAD score took 13.6 s on two threads and 0.87 s on one
    (0.32 s vs 0.47 s on an idle machine), and oneDNN's two-thread scratch took 54 MB more."""
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def _loaded(key: tuple, load, message: str, nbytes: int):
    """``load()``'s network from the shared cache, which counts it as ``nbytes``."""
    cache = loaded_models()

    def sized():
        return load(), nbytes

    if key in cache:
        return cache.get(key, sized)
    with st.spinner(message):
        return cache.get(key, sized, expected_bytes=nbytes)


def explanation(path: str, image, method: str, target: int | None):
    """The ``method`` map of ``image`` for ``target`` (None: the predicted class), with its
    ROAD score: computed once, so going back to a cell already explained, from another page
    or another session, shows its maps at once."""
    return _explanation(path, version(path), image, method, target)


@st.cache_data(show_spinner=False, max_entries=256)  # a map and its overlay: ~100 KB each
def _explanation(path: str, written: int, image, method: str, target: int | None):
    return explainer(path).explain(image, method, target, faithfulness=True)


def cells(name: str, size: int):
    """The dataset's cells as the models saw them: the raw images where they are on this
    machine, else the shipped cell bank (a fresh clone, Community Cloud)."""
    return _cells(name, size, os.environ.get("BLOODVIZ_DATA"))


@st.cache_resource(show_spinner="Indexing the dataset…")
def _cells(name: str, size: int, data_root: str | None):
    from bloodviz.cellbank import open_cells

    return open_cells(name, size, data_root)


def sidebar_selection() -> tuple[str | None, list[Checkpoint]]:
    """Dataset and models, chosen in the sidebar that app.py draws on every page.

    Each dataset has its own models widget (its options differ); the resolved choice is kept
    under a plain session key that the pages read with :func:`current_selection`.
    """
    available = checkpoint_paths(store_fingerprint())
    if not available:
        st.sidebar.info("No shipped checkpoints.")
        st.session_state["_selection"] = (None, [])
        return None, []
    keys = sorted(available)
    # open on the dataset with the most checkpoints (pbc-64): the zoo, not two stray models
    fullest = max(keys, key=lambda k: len(available[k]))
    # bind: the address carries the choice (?dataset=...&models-pbc-64=...), so a reload or a
    # shared link reopens the same view
    key = st.sidebar.selectbox(
        "Dataset", keys, index=keys.index(fullest), key="dataset", bind="query-params"
    )
    # runs that differ only in their seed are one model here; the leaderboard shows each
    ckpts = seed_representatives([checkpoint(p) for p in available[key]])
    names = [c.name for c in ckpts]
    selected = st.sidebar.multiselect(
        "Models",
        names,
        default=best_models(paths(ckpts)),
        key=f"models-{key}",
        bind="query-params",
        help=f"{len(names)} trained for {key}; the {DEFAULT_MODELS} most accurate are chosen "
        "at first. The leaderboard shows the whole zoo unless told to keep to these.",
    )
    chosen = [c for c in ckpts if c.name in selected]
    st.session_state["_selection"] = (key, [str(c.path) for c in chosen])
    return key, chosen


DEFAULT_MODELS = 4


def best_models(paths: tuple[str, ...], count: int = DEFAULT_MODELS) -> list[str]:
    """The ``count`` checkpoints with the best test (else first evaluated) accuracy."""
    return _best_models(paths, tuple(version(p) for p in paths), count)


@st.cache_data(show_spinner=False)
def _best_models(paths: tuple[str, ...], written: tuple[int, ...], count: int) -> list[str]:

    def accuracy(path: str) -> float:
        ckpt = checkpoint(path)
        metrics = ckpt.metrics().get(ckpt.default_split)
        return metrics["accuracy"] if metrics else 0.0

    ranked = sorted(paths, key=accuracy, reverse=True)
    return [checkpoint(p).name for p in ranked[:count]]


def ranked(ckpts: list[Checkpoint]) -> list[Checkpoint]:
    """The checkpoints, most accurate first (pages offer the best model by default)."""
    order = best_models(paths(ckpts), count=len(ckpts))
    return sorted(ckpts, key=lambda c: order.index(c.name))


def train_hint(dataset_key: str | None = None) -> str:
    dataset, _, size = (dataset_key or "pbc-64").rpartition("-")
    return f"python -m bloodviz train --model resnet18 --dataset {dataset} --size {size}"


def current_selection() -> tuple[str | None, list[Checkpoint]]:
    """What the sidebar has chosen on this run."""
    key, paths = st.session_state["_selection"]
    return key, [checkpoint(p) for p in paths]


def dataset_checkpoints(key: str | None) -> list[Checkpoint]:
    """Every checkpoint of the dataset ``key`` (the whole zoo), whatever the sidebar chose."""
    if key is None:
        return []
    return [checkpoint(p) for p in checkpoint_paths(store_fingerprint()).get(key, [])]


# -- comparison pages ---------------------------------------------------------------------------
def leaderboard(paths: tuple[str, ...], split: str):
    return _leaderboard(paths, split, tuple(version(p) for p in paths))


@st.cache_data(show_spinner=False)
def _leaderboard(paths: tuple[str, ...], split: str, written: tuple[int, ...]):
    from bloodviz.compare import leaderboard as build

    return build([checkpoint(p) for p in paths], split)


def ensemble_row(paths: tuple[str, ...], split: str, weighted: bool) -> dict:
    return _ensemble_row(paths, split, weighted, tuple(version(p) for p in paths))


@st.cache_data(show_spinner=False, max_entries=32)
def _ensemble_row(paths: tuple[str, ...], split: str, weighted: bool, written: tuple) -> dict:
    from bloodviz.ensemble import leaderboard_row

    return leaderboard_row([checkpoint(p) for p in paths], split, weighted=weighted)


def ensemble(paths: tuple[str, ...], split: str, weighted: bool = False):
    """(predictions, metrics) of the ensemble of ``paths`` on ``split``."""
    return _ensemble(paths, split, weighted, tuple(version(p) for p in paths))


@st.cache_data(show_spinner=False, max_entries=32)
def _ensemble(paths: tuple[str, ...], split: str, weighted: bool, written: tuple):
    from bloodviz.ensemble import ensemble_predictions
    from bloodviz.metrics import classification_summary

    preds = ensemble_predictions([checkpoint(p) for p in paths], split, weighted=weighted)
    return preds, classification_summary(preds.labels, preds.probs, preds.class_names)


class SlideExport:
    """Builds the slide export only when a download button asks for it (its callables run on
    their own thread when clicked), once for both buttons."""

    def __init__(self, build):
        self._build = build
        self._lock = threading.Lock()
        self._done: tuple[str, bytes] | None = None

    def _get(self) -> tuple[str, bytes]:
        with self._lock:
            if self._done is None:
                self._done = self._build()
            return self._done

    def html(self) -> str:
        return self._get()[0]

    def zip(self) -> bytes:
        return self._get()[1]


def slide_export(key, split, board, chosen, *, cost, quality, with_cams) -> SlideExport:
    """The current leaderboard view as an HTML report and a zip, built on the first click."""
    import time

    import bloodviz

    paths_ = paths(chosen)
    header = [
        f"Dataset {key}, split {split}; {len(board)} model(s) in the table: "
        + ", ".join(board["model"]),
        f"Figures per model for the sidebar's choice: {', '.join(c.name for c in chosen)}",
        f"Made by bloodviz {bloodviz.__version__} on {time.strftime('%Y-%m-%d %H:%M %Z')} from "
        "the checkpoints' cached predictions and benchmarks; each model's own run:",
        *[
            f"  {c.name}: {c.run.command} ({c.run.device}, finished {c.run.finished_at})"
            for c in chosen
        ],
    ]

    def build() -> tuple[str, bytes]:
        from bloodviz.export import cam_grid, render_html, render_zip, report_figures

        ckpts = [checkpoint(p) for p in paths_]
        figures = report_figures(ckpts, board, split, cost=cost, quality=quality)
        images = {}
        if with_cams and ckpts:
            source = cells(ckpts[0].dataset, ckpts[0].size)
            sample = str(ckpts[0].predictions(split).ids[0])
            caption = f"{sample}; columns: the cell, then " + ", ".join(c.name for c in ckpts)
            images["Grad-CAM"] = (cam_grid(ckpts, source.image(sample)), caption)
        page = render_html(
            title=f"bloodviz: {key} / {split}",
            header=header,
            board=board,
            figures=figures,
            images=images,
        )
        return page, render_zip(page, board, figures, images)

    return SlideExport(build)


def predictions(path: str, split: str):
    return _predictions(path, split, version(path))


@st.cache_data(show_spinner=False, max_entries=64)
def _predictions(path: str, split: str, written: int):
    return checkpoint(path).predictions(split)


@st.cache_data(show_spinner=False, max_entries=64)
def _ood_scores(path: str, split: str, written: int):
    from bloodviz.ood import read_card, stored_scores

    ckpt = checkpoint(path)
    card = read_card(ckpt)
    scores = stored_scores(ckpt, split)
    if card is None or scores is None:
        return None, None
    return scores, card


@st.cache_data(show_spinner=False, max_entries=16)
def _ood_comparison(paths: tuple[str, ...], written: tuple[int, ...]):
    from bloodviz.compare import ood_table

    return ood_table([checkpoint(p) for p in paths])


def ood_comparison(paths: tuple[str, ...]):
    """The chosen models' OOD benchmark, side by side (:func:`bloodviz.compare.ood_table`)."""
    return _ood_comparison(paths, tuple(version(p) for p in paths))


def ood_scores(path: str, split: str):
    """A checkpoint's stored OOD scores of a split and its detector's card (None, None where
    no detector was fitted: ``python -m bloodviz ood``)."""
    return _ood_scores(path, split, version(path))


def cell_image(name: str, size: int, sample_id: str):
    """The sample as the model saw it (the dataset's crop and size), as a uint8 array."""
    return cells(name, size).image(sample_id)


def cell_grid(name: str, size: int, ids, captions, per_row: int = 6) -> None:
    """Cells as the models saw them, ``per_row`` a row; a warning, not an error, where neither
    the dataset's images nor the cell bank are on this machine (the page's table still lists
    them)."""
    from bloodviz.paths import DataNotFoundError

    try:
        source = cells(name, size)
        if source.from_bank:
            st.caption(source.note)
        columns = st.columns(per_row)
        for i, (sample_id, caption) in enumerate(zip(ids, captions)):
            columns[i % per_row].image(
                cell_image(name, size, sample_id), width="stretch", caption=caption
            )
    except (DataNotFoundError, KeyError, ValueError, OSError) as exc:
        st.warning(f"The cells cannot be shown here ({exc}); the table still lists them.")


def chart(fig, key: str | None = None) -> None:
    """A plotly figure, full width, whose toolbar exports SVG/PNG."""
    from bloodviz.plots import EXPORT_CONFIG

    st.plotly_chart(fig, width="stretch", config=EXPORT_CONFIG, key=key)


def number_table(frame, columns, digits: int = 4) -> None:
    """A full-width table showing ``columns`` to ``digits`` decimals."""
    st.dataframe(
        frame,
        hide_index=True,
        width="stretch",
        column_config={c: st.column_config.NumberColumn(format=f"%.{digits}f") for c in columns},
    )


def table_download(frame, filename: str, label: str = "Download CSV") -> None:
    st.download_button(label, frame.to_csv(index=False), filename, "text/csv", key=filename)


def paths(ckpts: list[Checkpoint]) -> tuple[str, ...]:
    return tuple(str(c.path) for c in ckpts)


def need_models(key: str | None, ckpts: list[Checkpoint], at_least: int = 1) -> None:
    """Stop the page with the exact command to run when too few models are chosen."""
    if len(ckpts) >= at_least:
        return
    if key is None:
        st.info(f"No checkpoint yet. Make one with\n\n`{train_hint(key)}`")
    else:
        st.info(
            f"Choose at least {at_least} model(s) for {key} in the sidebar. To add another: "
            f"`{train_hint(key)}`"
        )
    st.stop()


def at_most_loaded(ckpts: list[Checkpoint], page: str) -> list[Checkpoint]:
    """The most accurate of the chosen models that fit in ``MODEL_MEMORY_MB`` together (at
    least one): pages that run networks keep to what the app holds in memory at once, or every
    visit would reload them. (The upload page's optional overlay loads a PyTorch copy too; the
    cache then drops the least recently used.)"""
    budget = MODEL_MEMORY_MB * 2**20
    kept, used = [], 0
    for ckpt in ranked(ckpts):
        cost = ckpt.memory_bytes
        if not kept or used + cost <= budget:
            kept.append(ckpt)
            used += cost
    if len(kept) < len(ckpts):
        st.caption(
            f"{page} runs the most accurate of the {len(ckpts)} chosen models that fit in the "
            f"{MODEL_MEMORY_MB} MB it keeps for networks ({', '.join(c.name for c in kept)}); "
            "choose fewer in the sidebar to pick others."
        )
    return kept


def with_weights(ckpts: list[Checkpoint], *, gradients: bool = True) -> list[Checkpoint]:
    """The chosen checkpoints that can run here: with PyTorch weights where the page needs
    ``gradients`` (Grad-CAM), else anything that classifies an image (an imported ONNX model
    too). Says which are left out and why."""
    from bloodviz.imports import imported_onnx_file

    def runs(ckpt: Checkpoint) -> bool:
        return ckpt.has_weights or (not gradients and imported_onnx_file(ckpt) is not None)

    for ckpt in ckpts:
        if not runs(ckpt):
            st.caption(
                f"**{ckpt.name}** is left out here: it ships predictions only "
                f"({ckpt.predictions_only_reason}). Its metrics are on the other pages."
            )
    return [c for c in ckpts if runs(c)]
