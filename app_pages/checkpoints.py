import streamlit as st

from bloodviz.checkpoints import store_fingerprint
from bloodviz.tables import checkpoint_table


@st.cache_data(show_spinner=False)
def load_table(fingerprint: tuple):
    return checkpoint_table(fingerprint[0])


st.title("bloodviz: shipped checkpoints")
st.caption(
    "Every number below is computed by bloodviz from the checkpoint's cached test predictions; "
    "each row carries the command that trained it."
)
table = load_table(store_fingerprint())
if table.empty:
    st.info(
        "No checkpoint yet. Train one with\n\n"
        "`python -m bloodviz train --model resnet18 --dataset pbc --size 64`"
    )
else:
    datasets = sorted(table["dataset"].unique())
    chosen = st.multiselect("Datasets", datasets, default=datasets)
    shown = table[table["dataset"].isin(chosen)]
    st.dataframe(
        shown,
        hide_index=True,
        width="stretch",
        column_config={
            "accuracy": st.column_config.NumberColumn(format="%.4f"),
            "macro F1": st.column_config.NumberColumn(format="%.4f"),
            "AUC": st.column_config.NumberColumn(format="%.4f"),
            "ECE": st.column_config.NumberColumn(format="%.4f"),
            "parameters": st.column_config.NumberColumn(format="%d"),
        },
    )
    st.download_button(
        "Download CSV", shown.to_csv(index=False), "bloodviz-checkpoints.csv", "text/csv"
    )

st.subheader("Add your model's predictions")
st.caption(
    "Trained a model elsewhere (a GPU, another framework)? Upload its probabilities for every "
    "test cell (and optionally every validation cell) and it joins every comparison page. One "
    "row per sample id, one `p_<class>` column a class, as bloodviz's own `predictions-*.csv` "
    "files; the template below lists the ids. Checked strictly: every id of a split once, known "
    "classes, finite probabilities summing to 1. The same from a terminal: `python -m bloodviz "
    "import-predictions preds.csv --dataset pbc --name mine`."
)
# the store's dataset keys, and the default key of every dataset even before a checkpoint
DATASET_CHOICES = sorted(
    set(table["dataset"] if not table.empty else []) | {"pbc-64", "blood-cells-64", "malaria-64"},
    key=lambda k: (k != "pbc-64", k),
)
with st.form("import_predictions", clear_on_submit=False):
    c1, c2 = st.columns(2)
    target = c1.selectbox("Dataset", DATASET_CHOICES, key="import_dataset")
    model_name = c2.text_input("Name", placeholder="e.g. my_convnext", key="import_name")
    uploaded = st.file_uploader("Predictions CSV", type=["csv"], key="import_file")
    overwrite = st.checkbox("Replace an imported checkpoint of this name", key="import_overwrite")
    submitted = st.form_submit_button("Import", icon=":material/upload:")
dataset_name, _, dataset_size = target.rpartition("-")
if submitted:
    import tempfile
    from pathlib import Path

    from bloodviz.imports import ImportRefused, import_predictions
    from bloodviz.paths import DataNotFoundError

    if uploaded is None or not model_name:
        st.error("Choose a CSV file and give the model a name.")
    else:
        with tempfile.TemporaryDirectory() as folder:
            csv_path = Path(folder) / "upload.csv"
            csv_path.write_bytes(uploaded.getvalue())
            try:
                with st.spinner("Checking and scoring the predictions…"):
                    written = import_predictions(
                        csv_path,
                        dataset=dataset_name,
                        size=int(dataset_size),
                        name=model_name.strip(),
                        overwrite=overwrite,
                        source_name=uploaded.name,
                        command=f"uploaded on the checkpoints page: {uploaded.name}",
                    )
            except (ImportRefused, DataNotFoundError) as exc:
                st.error(f"Not imported: {exc}")
            else:
                st.success(
                    f"Imported as {target}/{model_name.strip()} ({written}); choose it in the "
                    "sidebar to compare it."
                )


@st.cache_data(show_spinner=False, max_entries=8)
def template(dataset: str, size: int) -> str | None:
    from bloodviz.imports import prediction_template
    from bloodviz.paths import DataNotFoundError

    try:
        return prediction_template(dataset, size)
    except (DataNotFoundError, KeyError):
        return None


csv_template = template(dataset_name, int(dataset_size))
if csv_template:
    st.download_button(
        f"Template for {target} (its test ids)",
        csv_template,
        f"bloodviz-template-{target}.csv",
        "text/csv",
        icon=":material/download:",
    )
