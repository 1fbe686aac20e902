import numpy as np
import pandas as pd
import streamlit as st

from bloodviz import ui
from bloodviz.plots import probability_bars
from bloodviz.predict import classify, result_rows
from bloodviz.preprocess import upscale

st.title("Upload and classify")
key, ckpts = ui.current_selection()
ckpts = ui.with_weights(ckpts)
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
framing_label = st.radio(
    "What is in each image?",
    ["Decide by size", "A full microscope field", "One cropped cell"],
    horizontal=True,
    help="PBC models were trained on the centre 200 of 360 pixels of each field "
    "(MedMNIST's crop). A full 360x363 field is cut the same way; a cropped cell is used whole.",
)
framing = {"A full microscope field": "full", "One cropped cell": "cell"}.get(framing_label)
show_cam = st.toggle(
    "Grad-CAM overlay",
    value=False,
    help="Classification runs on ONNX Runtime; a saliency map needs the network's gradients, "
    "so the first overlay loads PyTorch (a few seconds, about 600 MB).",
)
if not files:
    st.stop()

runners = {c.name: ui.runner(str(c.path)) for c in ckpts}
with st.spinner(f"Classifying {len(files)} image(s)…"):
    results = classify([(f.name, f.getvalue()) for f in files], ckpts, runners, framing)

rows = result_rows(results, classes)
table = pd.DataFrame(rows)
st.subheader("Results")
st.dataframe(table, hide_index=True, width="stretch")
st.download_button(
    "Download CSV", table.to_csv(index=False), "bloodviz-predictions.csv", "text/csv"
)

for result in results[:20]:
    st.divider()
    if result.error:
        st.error(result.error)
        continue
    st.subheader(result.name)
    st.caption(f"framing: {result.framing}")
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
            explanation = ui.explainer(str(ckpt.path)).explain(result.cell, "gradcam")
            top = int(np.argmax(explanation.probs))
            column.image(
                upscale(explanation.overlay, 256),
                caption=f"{ckpt.name}: Grad-CAM for {classes[top]}",
            )
if len(results) > 20:
    st.info(f"Showing details of the first 20 of {len(results)} images; all are in the table.")
