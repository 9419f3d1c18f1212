"""lldd dashboard entry point: ``streamlit run app.py``.

Sets the page config, draws the model settings in the sidebar (stored in ``st.session_state`` as a
:class:`~lldd_core.models.loading.ModelSpec` for the pages) and runs the selected page. UI only: every
computation goes through :func:`lldd_core.service.get_service`.
"""

from __future__ import annotations

import streamlit as st

from pages._sidebar import render_cache_sidebar, render_model_sidebar

st.set_page_config(page_title="lldd", page_icon="📐", layout="wide")

# Every url_path differs from its file's name on purpose. Streamlit runs the first script run of a
# process (and every AppTest run) through its legacy pages/-directory mode, which maps
# "/<file name>" straight to pages/<file name>.py and would skip this script (no page config, no
# sidebar). A url_path that mode does not know falls back to this script, and st.navigation below
# then resolves it.
PAGES = [
    st.Page("pages/detached_jacobian.py", title="Detached Jacobian", icon="🧮", url_path="jacobian", default=True),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:", url_path="depth"),
    st.Page("pages/graph.py", title="Attribution graph", icon=":material/account_tree:", url_path="circuit"),
    st.Page("pages/gains.py", title="Gain curves", icon=":material/show_chart:", url_path="gain-curves"),
    st.Page("pages/scaling.py", title="Scaling", icon=":material/stacked_line_chart:", url_path="model-scaling"),
    st.Page("pages/control.py", title="Control", icon=":material/tune:", url_path="control-schedules"),
    st.Page("pages/steering.py", title="Steering", icon=":material/alt_route:", url_path="steer"),
]

page = st.navigation(PAGES)
render_model_sidebar()  # after st.navigation, so the page list sits above the model settings
page.run()
render_cache_sidebar()  # after the page, so it counts what the page just stored
