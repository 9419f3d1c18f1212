"""lldd dashboard entry point: ``streamlit run app.py``.

Sets the page config, draws the model settings in the sidebar (stored in ``st.session_state`` as a
:class:`~lldd_core.models.loading.ModelSpec` for the pages) and runs the selected page. UI only: every
computation goes through :func:`lldd_core.service.get_service`.
"""

from __future__ import annotations

import streamlit as st

from pages.common import link
from pages.common.nav import inside_app, view_links

st.set_page_config(page_title="lldd", page_icon="📐", layout="wide")

# Every view's url_path is its file's name: Streamlit runs the first script run of a process (and every
# AppTest run) through its legacy pages/ mode, which serves pages/<name>.py at /<name> and runs it instead
# of this script; the view then hands over to this script (pages/common/nav.py), so every URL means the
# same view in both modes. The default view is "/" (Streamlit gives a default page no other URL; its
# url_path only names it), and a hidden alias serves it at /<name> too.
PAGES = [
    st.Page("pages/jacobian.py", title="Detached Jacobian", icon="🧮", url_path="start", default=True),
    st.Page("pages/layers.py", title="Layers", icon=":material/layers:", url_path="layers"),
    st.Page("pages/graph.py", title="Attribution graph", icon=":material/account_tree:", url_path="graph"),
    st.Page("pages/gains.py", title="Gain curves", icon=":material/show_chart:", url_path="gains"),
    st.Page("pages/scaling.py", title="Scaling", icon=":material/stacked_line_chart:", url_path="scaling"),
    st.Page("pages/control.py", title="Control", icon=":material/tune:", url_path="control"),
    st.Page("pages/steering.py", title="Steering", icon=":material/alt_route:", url_path="steering"),
    st.Page("pages/lab.py", title="Steering lab", icon=":material/science:", url_path="lab"),
]
ALIASES = [st.Page("pages/jacobian.py", title="Detached Jacobian", icon="🧮", url_path="jacobian", visibility="hidden")]

# Before the heavy imports below: the first st.navigation call of the process ends the legacy mode. Hidden:
# Streamlit's page list would also show the legacy mode's list of files; view_links draws ours.
page = st.navigation(PAGES + ALIASES, position="hidden")

from pages.common import ui  # noqa: E402
from pages.common.sidebar import render_cache_sidebar, render_figure_sidebar, render_model_sidebar  # noqa: E402

link.begin()  # before any widget: an opened permalink seeds the widgets (pages/common/link.py)
ui.begin_report()  # the view's figures and tables are collected for the report bundle as they are drawn
view_links(PAGES)
render_model_sidebar()  # after the links, so the page list sits above the model settings
report_slot = render_figure_sidebar()  # the theme and export size, before the view draws its figures
with inside_app(), link.guard():
    page.run()
ui.report_button(report_slot, page.title, page.url_path)  # what the view drew, with its settings and link
render_cache_sidebar()  # after the page, so it counts what the page just stored
link.finish()  # the URL follows the widgets; the link to copy
