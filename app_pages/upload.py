import numpy as np
import streamlit as st

from bloodviz import ui
from bloodviz.cellbank import sample_files
from bloodviz.generalise import OTHER_DATASET, SHARED_CLASSES
from bloodviz.localise import draw_boxes
from bloodviz.paths import DataNotFoundError
from bloodviz.plots import probability_bars
from bloodviz.predict import classify, result_rows, typed_table
from bloodviz.preprocess import upscale
from bloodviz.recalibrate import MIN_CELLS

st.title("Upload and classify")
key, ckpts = ui.current_selection()
ckpts = ui.at_most_loaded(ui.with_weights(ckpts, gradients=False), "Upload and classify")
if not ckpts:
    st.info(
        f"Choose a dataset and at least one model in the sidebar. No checkpoint yet? "
        f"`{ui.train_hint(key)}`"
    )
    st.stop()
classes = ckpts[0].preprocessing.class_names
st.caption(
    f"Models trained on **{key}**. {ckpts[0].preprocessing.description} Uploads stay in memory; "
    "nothing is written to disk."
)
files = st.file_uploader(
    "Microscope images (JPEG, PNG, BMP, TIFF incl. 16-bit, WebP)",
    type=["jpg", "jpeg", "png", "bmp", "tif", "tiff", "webp"],
    accept_multiple_files=True,
)
OWN_LAB = "this dataset's test split"
FRAMINGS = {
    "Decide by size": None,
    "A smear field: find the white cells": "field",
    "A PBC-style field (centre crop)": "full",
    "One cropped cell": "cell",
}
framing_label = st.radio(
    "What is in each image?",
    list(FRAMINGS),
    horizontal=True,
    help="A smear field (shorter side 400 px or more, e.g. BCCD's 640x480): each white cell is "
    "found by its stained nucleus and cropped so that it fills the crop as in the training "
    "cells, then classified. PBC models were trained on the centre 200 of 360 pixels of each "
    "image (MedMNIST's crop): a 360x363 PBC image is cut the same way. A cropped cell is used "
    "whole. A cell from another microscope: 'find the white cells' works on any image and cuts "
    "the cell at the scale of the model's training cells (with the `-robust-reinhard` models "
    "this lifts cross-lab balanced accuracy from about 30% to 70-80%: Generalisation page).",
)
framing = FRAMINGS[framing_label]
show_cam = st.toggle(
    "Grad-CAM overlay",
    value=False,
    help="Classification runs on ONNX Runtime; a saliency map needs the network's gradients, "
    "so the first overlay loads PyTorch (a few seconds, about 600 MB). With the overlay on, "
    "the same PyTorch networks classify too.",
)
recalibrate = st.toggle(
    "Recalibrate to these images' microscope",
    value=False,
    key="recalibrate",
    bind="query-params",
    help="For images from another lab: each network's batch norm is re-estimated on all the "
    f"uploaded cells (at least {MIN_CELLS}, from one microscope; labels are not needed) before "
    "they are classified (AdaBN). It needs PyTorch (loaded on first use, about 600 MB) and "
    "works for networks with batch norm (ResNets, Inception, EfficientNet, cnn_baseline, "
    "cnn002_bn); others classify as trained. The Generalisation page measures what it does "
    "across labs. Grad-CAM overlays show the network as trained.",
)
truth: dict[str, str] = {}
if files:
    inputs = [(f.name, f.getvalue()) for f in files]
else:
    # a visitor without a microscope image (Community Cloud) tries real test cells instead
    left, right = st.columns([3, 1])
    if not left.toggle(
        "No image at hand? Classify real test cells, one of each class",
        key="samples",
        bind="query-params",
    ):
        st.stop()
    seed = st.session_state.setdefault("sample_seed", 0)
    if right.button("Other cells", icon=":material/shuffle:"):
        st.session_state["sample_seed"] = seed = seed + 1
    # PBC and Kaggle's blood-cells come from two labs: the other lab's cells of the classes
    # both know show what a stranger's microscope does to these models
    other_lab = OTHER_DATASET.get(ckpts[0].dataset)
    lab = OWN_LAB
    if other_lab:
        lab = (
            st.segmented_control(
                "Cells from",
                [OWN_LAB, f"another lab ({other_lab})"],
                default=OWN_LAB,
                key="samples_lab",
                bind="query-params",
            )
            or OWN_LAB
        )
    sample_dataset = ckpts[0].dataset if lab == OWN_LAB else other_lab
    try:
        source = ui.cells(sample_dataset, ckpts[0].size)
        samples = sample_files(
            source,
            split="test" if lab != OWN_LAB else ckpts[0].default_split or "test",
            seed=seed,
            classes=None if lab == OWN_LAB else SHARED_CLASSES,
        )
    except (DataNotFoundError, KeyError, ValueError) as exc:
        st.warning(f"No test cells to offer here ({exc}).")
        st.stop()
    st.caption(source.note)
    if lab != OWN_LAB:
        st.caption(
            f"{sample_dataset}'s test cells of the four classes both datasets share, classified by "
            f"models trained on {ckpts[0].dataset}. The Generalisation page measures this on "
            "every such cell; the `-robust-reinhard` models are trained for other labs."
        )
    inputs = [(name, data) for name, data, _ in samples]
    truth = {name: true_class for name, _, true_class in samples}
    framing = "cell"

# with the overlay on, the PyTorch copies it needs classify too: one copy of each network
# and so do they to be recalibrated
on_torch = show_cam or recalibrate
runners = {c.name: ui.runner(str(c.path), on_explainer=on_torch and c.has_weights) for c in ckpts}
if recalibrate:
    runners, notes = ui.recalibrated(inputs, ckpts, runners, framing)
    for model, note in notes.items():
        st.caption(f"{model}: {note}")
with st.spinner(f"Classifying {len(inputs)} image(s)…"):
    results = classify(inputs, ckpts, runners, framing)
del runners  # the cache may drop an ONNX session now that the images are classified

rows = result_rows(results, classes)
table = typed_table(rows)
if not any(r.box for r in results):  # no field framed: the box columns would stay empty
    table = table.drop(columns=["box_x0", "box_y0", "box_x1", "box_y1"], errors="ignore")
if truth:
    table.insert(1, "true class", table["path"].map(truth))
st.subheader("Results")
st.dataframe(table, hide_index=True, width="stretch")
st.download_button(
    "Download CSV", table.to_csv(index=False), "bloodviz-predictions.csv", "text/csv"
)

shown_fields: set[int] = set()
for result in results[:20]:
    st.divider()
    if result.error:
        st.error(result.error)
        continue
    if result.field_image is not None and id(result.field_image) not in shown_fields:
        # a field: once, with every cell found in it boxed and named by the ensemble's call
        shown_fields.add(id(result.field_image))
        cells = [r for r in results if r.field_image is result.field_image]
        labels = [f"#{n} {classes[int(r.ensemble.argmax())]}" for n, r in enumerate(cells, 1)]
        st.image(
            draw_boxes(result.field_image, [r.box for r in cells], labels),
            caption=f"{len(cells)} white cell(s) found; each is classified below",
        )
    st.subheader(result.name + (f" (true class: {truth[result.name]})" if truth else ""))
    box = f", box {result.box}" if result.box else ""
    st.caption(f"framing: {result.framing}{box}")
    left, right = st.columns([1, 2])
    left.image(upscale(result.cell, 256), caption="what the model sees")
    probs = dict(result.per_model)
    if len(probs) > 1:
        probs["ensemble"] = result.ensemble
    with right:
        ui.chart(probability_bars(probs, classes), key=f"probs-{result.name}")
    for model, notes in result.warnings.items():
        for note in notes:
            st.warning(f"{model}: {note}")
    if show_cam:
        columns = st.columns(len(ckpts))
        for column, ckpt in zip(columns, ckpts):
            if not ckpt.has_weights:  # an imported ONNX model: no gradients to follow
                column.caption(f"{ckpt.name}: no Grad-CAM ({ckpt.predictions_only_reason}).")
                continue
            explanation = ui.explainer(str(ckpt.path)).explain(result.cell, "gradcam")
            top = int(np.argmax(explanation.probs))
            column.image(
                upscale(explanation.overlay, 256),
                caption=f"{ckpt.name}: Grad-CAM for {classes[top]}",
            )
if len(results) > 20:
    st.info(f"Showing details of the first 20 of {len(results)} images; all are in the table.")
