import io

import numpy as np
import streamlit as st
from PIL import Image

from bloodviz import ui
from bloodviz.compare import filter_cells
from bloodviz.explain import CAM_METHODS, SLOW_METHODS
from bloodviz.paths import DataNotFoundError
from bloodviz.preprocess import upscale

st.title("Grad-CAM explorer")
key, ckpts = ui.current_selection()
ckpts = ui.at_most_loaded(ui.with_weights(ckpts), "Grad-CAM")
if not ckpts:
    st.info(
        f"Choose a dataset and models in the sidebar. No checkpoint yet? `{ui.train_hint(key)}`"
    )
    st.stop()
first = ckpts[0]
classes = first.preprocessing.class_names
try:
    data = ui.cells(first.dataset, first.size)
except (DataNotFoundError, ValueError) as exc:
    st.warning(f"{exc}. Set BLOODVIZ_DATA or use the upload page to explain your own image.")
    st.stop()
if data.from_bank:
    st.caption(data.note)

split = first.default_split
preds = ui.predictions(str(first.path), split)
with st.expander("Pick a test cell", expanded=True):
    # bound to ?true=<class>&pred=<class>: a confusion-matrix cell links here
    options = ["any", *classes]
    c1, c2, c3, c4 = st.columns(4)
    true_class = c1.selectbox("True class", options, key="true", bind="query-params")
    pred_class = c2.selectbox(
        f"Predicted by {first.name}", options, key="pred", bind="query-params"
    )
    outcome = c3.selectbox("Outcome", ["any", "correct", "misclassified"])
    confidence = c4.slider("Confidence", 0.0, 1.0, (0.0, 1.0), 0.05)
    candidates = filter_cells(
        preds,
        true=None if true_class == "any" else classes.index(true_class),
        predicted=None if pred_class == "any" else classes.index(pred_class),
        outcome=outcome,
        confidence=confidence,
    )
    st.caption(f"{len(candidates)} of {len(preds.ids)} {split} cells match.")
    if len(candidates) == 0:
        st.stop()
    sample = st.selectbox("Cell", candidates, key="cell", bind="query-params")

methods = st.multiselect(
    "Methods",
    list(CAM_METHODS),
    default=["gradcam"],
    format_func=lambda m: CAM_METHODS[m][0],
    key="methods",
    bind="query-params",
)
target_name = st.selectbox(
    "Target class", ["predicted", *classes], key="target", bind="query-params"
)
image = data.image(sample)
truth = classes[preds.labels[list(preds.ids).index(sample)]]
st.caption(f"**{sample}**, true class **{truth}**")

grid = []
progress = st.progress(0.0, text="Computing maps…")
jobs = [(c, m) for c in ckpts for m in methods]
target = None if target_name == "predicted" else classes.index(target_name)
for ckpt in ckpts:
    explainer = ui.explainer(str(ckpt.path))
    columns = st.columns(len(methods) + 1)
    columns[0].image(upscale(image, 192), caption=ckpt.name)
    probs = explainer.probabilities(image)
    columns[0].write(f"{classes[int(probs.argmax())]} {probs.max():.1%}")
    scores, ood_card = ui.ood_scores(str(ckpt.path), split)
    if scores is not None:
        found = scores.loc[scores["sample_id"] == sample, "ood_score"]
        if len(found):
            value, limit = float(found.iloc[0]), ood_card["threshold"]
            verdict = "**flagged**: unlike the training data" if value > limit else "in range"
            columns[0].caption(f"OOD score {value:.3g} (threshold {limit:.3g}): {verdict}")
    row_images = [upscale(image, 192)]
    for col, method in zip(columns[1:], methods):
        label = CAM_METHODS[method][0]
        if method in SLOW_METHODS:
            with st.spinner(f"{label} on {ckpt.name} (one pass per channel)…"):
                result = ui.explanation(str(ckpt.path), image, method, target)
        else:
            result = ui.explanation(str(ckpt.path), image, method, target)
        score = result.faithfulness["road_score"]
        col.image(
            upscale(result.overlay, 192),
            caption=f"{label} → {classes[result.target]} · ROAD {score:+.3f} · "
            f"{result.seconds * 1000:.0f} ms",
        )
        row_images.append(upscale(result.overlay, 192))
        done = len(grid) * len(methods) + len(row_images) - 1
        progress.progress(done / len(jobs), text=f"{done}/{len(jobs)} maps")
    grid.append(np.concatenate(row_images, axis=1))
progress.empty()
st.caption(
    "ROAD score = (LeRF − MoRF) / 2 at 50% of pixels imputed: higher means removing the "
    "highlighted pixels hurts the prediction more than removing the others."
)
if grid:
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate(grid, axis=0)).save(buffer, format="PNG")
    st.download_button("Download grid (PNG)", buffer.getvalue(), f"gradcam-{key}.png", "image/png")
