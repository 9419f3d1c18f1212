"""Dashboard views: every top-level file here is one view, named by its URL path (``pages/<url>.py`` is
``/<url>``), run by ``st.navigation`` in app.py.

Nothing else may sit at this level: Streamlit's legacy multipage mode serves every top-level ``pages/*.py``
as a page (see :mod:`pages.common.nav`). Shared UI helpers live in :mod:`pages.common`.
"""
