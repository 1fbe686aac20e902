import pandas as pd
import streamlit as st

from bloodviz import generalise, ui
from bloodviz.plots import generalisation_bars

st.title("Generalisation")
key, ckpts = ui.current_selection()
st.caption(
    "Each white-cell model on the other lab's cells of the four classes PBC and Kaggle share "
    "(eosinophil, lymphocyte, monocyte, neutrophil), beside its own test cells of those "
    "classes. *As-is*: the model's own call (a PBC model may answer platelet); *restricted*: "
    "the call among the four shared classes. Balanced accuracy is the mean per-class recall "
    "(TEST_SIMPLE is two-thirds neutrophils); chance is 25%. Intervals: bootstrap over cells. "
    "*BCCD fields (localised)*: whole smear photographs whose label names one shared class, "
    "the white cell found and framed by the localiser as an upload would be (a field where "
    "none is found counts as wrong); a blood-cells model is scored on the fields whose region "
    "gave none of its training images only. *(localised, recalibrated)*: the same localised "
    "cells, classified after re-estimating the network's batch norm on "
    f"{generalise.RECALIBRATION_CELLS} unlabelled cells of the other lab's training images "
    "(AdaBN, as the upload page's *Recalibrate* toggle does with your cells); networks "
    "without batch norm have no such row."
)
if not ckpts or ckpts[0].dataset not in generalise.OTHER_DATASET:
    st.info("Choose pbc-64 or blood-cells-64 models in the sidebar: they share four classes.")
    st.stop()
found = {c.name: generalise.stored(c) for c in ckpts}
results = [r for r in found.values() if r]
missing = [name for name, r in found.items() if r is None]
if missing:
    st.info(
        f"Not measured yet for {', '.join(missing)}: `python -m bloodviz generalise --dataset "
        f"{ckpts[0].dataset} --size {ckpts[0].size} --models {' '.join(missing)}`."
    )
if not results:
    st.stop()
rows = pd.DataFrame(generalise.table_rows(results))
ui.chart(generalisation_bars(rows), key="generalisation_bars")
ui.number_table(rows, ["balanced (as-is)", "balanced (restricted)", "accuracy (as-is)"])
ui.table_download(rows, f"bloodviz-generalisation-{key}.csv")
commands = sorted({r["command"] for r in results if r.get("command")})
st.caption(
    "Measured by "
    + "; ".join(f"`{c}`" for c in commands or ["python -m bloodviz generalise"])
    + f" on {results[0]['hardware'].get('cpu', 'CPU')}."
)
