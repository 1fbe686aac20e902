"""bloodviz dashboard: `streamlit run app.py`."""

import streamlit as st

from bloodviz import ui

st.set_page_config(page_title="bloodviz", page_icon=":material/bloodtype:", layout="wide")
ui.limit_heap_arenas()  # before the first page's threads allocate: see its docstring
ui.keep_triton_out()  # before a page imports torchvision: see its docstring


def page(script: str, title: str, icon: str, **options) -> st.Page:
    # app_pages/, not pages/: Streamlit treats a pages/ folder as legacy multipage mode
    return st.Page(f"app_pages/{script}", title=title, icon=f":material/{icon}:", **options)


navigation = st.navigation(
    {
        "Compare": [
            page("leaderboard.py", "Leaderboard", "leaderboard", default=True),
            page("report.py", "Model report", "analytics"),
            page("head_to_head.py", "Head-to-head", "compare_arrows"),
            page("studies.py", "Studies vs bloodviz", "menu_book"),
            page("generalisation.py", "Generalisation", "travel_explore"),
        ],
        "Inspect": [
            page("gradcam.py", "Grad-CAM explorer", "local_fire_department"),
            page("upload.py", "Upload and classify", "upload"),
            page("data.py", "Data", "photo_library"),
            page("checkpoints.py", "Checkpoints and provenance", "table_chart"),
        ],
    }
)
ui.sidebar_selection()  # drawn here so the choice carries across pages
ui.import_page_modules(navigation.url_path)  # one session at a time: see ui.PAGE_MODULES
ui.restore_page_view(navigation.url_path)  # Back/Forward: see ui.restore_page_view
try:
    navigation.run()
finally:  # also when the page stops early (st.stop)
    ui.remember_page_view(navigation.url_path)
    ui.release_after_page(navigation.url_path)
