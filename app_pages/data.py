import numpy as np
import pandas as pd
import streamlit as st

from bloodviz import ui
from bloodviz.checkpoints import list_checkpoints
from bloodviz.compare import split_leakage
from bloodviz.paths import DataNotFoundError
from bloodviz.plots import class_balance, leakage_bars


@st.cache_data(show_spinner=False)
def leakage(fingerprint: tuple):
    return split_leakage(list_checkpoints(fingerprint[0]))


def show_leakage() -> None:
    st.subheader("Patient leakage")
    table = leakage(ui.store_fingerprint())
    if table.empty:
        st.info(
            "No model is trained on both splits yet: `python -m bloodviz train --model resnet18 "
            "--dataset malaria` and `... --dataset malaria-cells`."
        )
        return
    st.caption(
        "The same model trained twice on the same cells: once split at random by cell, as most "
        "published notebooks do, and once split by patient. The random split's own test holds "
        "new cells of patients it trained on; every model is also scored on the patient split's "
        "test patients, whom neither run saw. The gap is what a random split overstates for a "
        "new patient. Bars carry 95% bootstrap intervals."
    )
    ui.chart(leakage_bars(table), key="data_leakage")
    shown = table.drop(columns=["seen_ci", "new_ci", "honest_ci"])
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            c: st.column_config.NumberColumn(format="%.4f")
            for c in shown.columns
            if c not in ("model", "size", "n_seen", "n_new")
        },
    )


st.title("Data")
key, ckpts = ui.current_selection()
if key is None:
    st.info(f"No checkpoint yet, so no dataset is chosen. `{ui.train_hint(key)}`")
    st.stop()
name, _, size = key.rpartition("-")
if name.startswith("malaria"):
    show_leakage()
try:
    data = ui.cells(name, int(size))
except (DataNotFoundError, ValueError) as exc:
    st.warning(
        f"{exc}. Set BLOODVIZ_DATA, or fetch them with `python -m bloodviz download {name}`."
    )
    st.stop()
counts = data.class_counts()
st.caption(data.description)
if data.from_bank:
    st.info(data.note)
ui.chart(class_balance(counts), key="data_balance")
table = pd.DataFrame(counts).fillna(0).astype(int)
table.loc["total"] = table.sum()
st.dataframe(table, width="stretch")
ui.table_download(table.reset_index(names="class"), f"bloodviz-class-balance-{key}.csv")

st.subheader("Sample gallery")
c1, c2 = st.columns([1, 3])
split = c1.selectbox("Split", list(data.gallery_splits), key="data_split")
per_class = c2.slider("Cells per class", 2, 12, 6, key="data_per_class")
ids, labels = data.sample_ids(split), data.labels(split)
classes = list(data.class_names)
seed = st.session_state.setdefault("data_seed", 0)
if st.button("Shuffle", icon=":material/shuffle:"):
    st.session_state["data_seed"] = seed = seed + 1
rng = np.random.default_rng(seed)
for k, cls in enumerate(classes):
    members = np.flatnonzero(labels == k)
    if len(members) == 0:
        continue
    chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
    st.markdown(f"**{data.display_class(cls)}**: {len(members)} {split} images")
    columns = st.columns(per_class)
    for col, i in zip(columns, chosen):
        col.image(
            ui.cell_image(name, int(size), ids[i]), width="stretch", caption=ids[i].split("/")[-1]
        )
