"""bloodviz dashboard: `streamlit run app.py`."""

import streamlit as st

from bloodviz import ui

st.set_page_config(page_title="bloodviz", page_icon=":material/bloodtype:", layout="wide")

pages = [
    st.Page(
        "pages/checkpoints.py",
        title="Shipped checkpoints",
        icon=":material/table_chart:",
        default=True,
    ),
    st.Page("pages/gradcam.py", title="Grad-CAM explorer", icon=":material/local_fire_department:"),
    st.Page("pages/upload.py", title="Upload and classify", icon=":material/upload:"),
]
navigation = st.navigation(pages)
ui.sidebar_selection()  # drawn here so the choice carries across pages
navigation.run()
