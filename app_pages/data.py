import numpy as np
import pandas as pd
import streamlit as st

from bloodviz import twins, ui
from bloodviz.checkpoints import list_checkpoints
from bloodviz.compare import split_leakage, twin_effect
from bloodviz.paths import DataNotFoundError
from bloodviz.plots import class_balance, leakage_bars, twin_bars


@st.cache_data(show_spinner=False)
def leakage(fingerprint: tuple):
    return split_leakage(list_checkpoints(fingerprint[0], every_seed=False))


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
    ui.number_table(
        shown, [c for c in shown.columns if c not in ("model", "size", "n_seen", "n_new")]
    )


@st.cache_data(show_spinner=False)
def twin_accuracy(fingerprint: tuple) -> pd.DataFrame:
    sources = {m.image: twins.source_of(m) for m in twins.read_sources() if m.matched}
    ckpts = list_checkpoints(fingerprint[0], every_seed=False)
    ckpts = [c for c in ckpts if c.dataset == "blood-cells"]
    return twin_effect(ckpts, sources)


def show_twins(data, size: int) -> None:
    st.subheader("Kaggle twins: TRAIN and TEST cut from the same field")
    try:
        matches = twins.read_sources()
    except DataNotFoundError as exc:
        st.info(str(exc))
        return
    st.caption(
        "Kaggle's TRAIN and TEST are augmented copies (rotated, flipped, sheared, zoomed, "
        "recoloured) of the 366 BCCD smear fields, halved to 320x240. Every image was matched "
        "to its source field by SIFT keypoints and an affine transform fitted with RANSAC "
        "(mirror included), and fields that photograph the same spot twice were joined into "
        "one source. The field's own label, never used in matching, agrees with the image's "
        "class (last column). A TEST image has a twin when an image of its source is in "
        "TRAIN; `test_dedup` keeps the TEST images without one (unmatched ones are left out)."
    )
    table = pd.DataFrame(twins.leakage_table(matches))
    st.dataframe(
        table,
        hide_index=True,
        width="stretch",
        column_config={
            "twin_share": st.column_config.NumberColumn(format="percent"),
            "label_agreement": st.column_config.NumberColumn(format="percent"),
        },
    )
    test_rows = table[(table["split"] == "test") & (table["class"] == "all")].iloc[0]
    st.markdown(
        f"**{test_rows['with_train_twin']} of {test_rows['matched']}** matched TEST images "
        f"have a twin in TRAIN: the split itself is by source. What inflates TEST is inside "
        f"it: its images are copies of only **{test_rows['source_fields']}** source cells, so "
        "an interval that resamples images is far too narrow. The bars' `test_dedup` "
        "intervals resample source cells instead. Validation, carved from TRAIN at random, "
        "shares its source cells with training."
    )
    effect = twin_accuracy(ui.store_fingerprint())
    if not effect.empty:
        ui.chart(twin_bars(effect), key="data_twin_bars")
        shown = effect.drop(columns=["test_ci", "dedup_ci", "simple_ci", "n_test"]).assign(
            dedup_ci_by_source=[f"{lo:.3f}-{hi:.3f}" for lo, hi in effect["dedup_ci_by_source"]]
        )
        ui.number_table(shown, ["test (all)", "test_dedup (no TRAIN twin)", "test_simple", "gap"])
    leaked = sorted(twins.twinned_ids(matches))
    if not leaked:
        return
    image = st.selectbox("A TEST image with twins in TRAIN", leaked, key="data_twin_image")
    pairs = twins.twins_of(matches, image)
    source = next(m for m in matches if m.image == image)
    other_fields = sorted({m.field for m in pairs} - {source.field})
    elsewhere = (
        f" (from field {', '.join(map(str, other_fields))}: another photograph of the same spot)"
        if other_fields
        else ""
    )
    st.markdown(
        f"Field **{source.field}** ({source.field_label or 'no label'}), {source.inliers} "
        f"keypoints agree; **{len(pairs)}** TRAIN images come from the same source"
        f"{elsewhere}."
    )
    columns = st.columns(7)
    columns[0].image(ui.cell_image("blood-cells", size, image), caption="TEST", width="stretch")
    if data.from_bank:
        columns[1].info("The TRAIN twins need the raw Kaggle images on this machine.")
        return
    for col, twin in zip(columns[1:], pairs[:6]):
        col.image(ui.cell_image("blood-cells", size, twin.image), caption="TRAIN", width="stretch")
    try:
        root = twins.find_bccd_fields(data._raw.folder.parent.parent)
        st.image(
            twins.field_with_footprints(root, source.field, [source, *pairs]),
            caption=f"BCCD field {source.field}: the TEST image's footprint (red) and those "
            "of its TRAIN twins cut from this field (blue)",
            width=640,
        )
    except DataNotFoundError as exc:
        st.caption(str(exc))


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
if name == "blood-cells":
    show_twins(data, int(size))
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
