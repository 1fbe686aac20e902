"""bloodviz dashboard: `streamlit run app.py`."""

import streamlit as st

from bloodviz import ui

st.set_page_config(page_title="bloodviz", page_icon=":material/bloodtype:", layout="wide")

pages = {
    "Compare": [
        st.Page(
            "pages/leaderboard.py",
            title="Leaderboard",
            icon=":material/leaderboard:",
            default=True,
        ),
        st.Page("pages/report.py", title="Model report", icon=":material/analytics:"),
        st.Page("pages/head_to_head.py", title="Head-to-head", icon=":material/compare_arrows:"),
        st.Page("pages/studies.py", title="Studies vs bloodviz", icon=":material/menu_book:"),
    ],
    "Inspect": [
        st.Page(
            "pages/gradcam.py", title="Grad-CAM explorer", icon=":material/local_fire_department:"
        ),
        st.Page("pages/upload.py", title="Upload and classify", icon=":material/upload:"),
        st.Page("pages/data.py", title="Data", icon=":material/photo_library:"),
        st.Page(
            "pages/checkpoints.py",
            title="Checkpoints and provenance",
            icon=":material/table_chart:",
        ),
    ],
}
navigation = st.navigation(pages)
ui.sidebar_selection()  # drawn here so the choice carries across pages
navigation.run()
