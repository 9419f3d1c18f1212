"""Dashboard views, one file per page (run by ``st.navigation`` in app.py).

Files starting with ``_`` are shared UI helpers, not pages: ``_sidebar`` (model picker and settings,
cache), ``_build`` (first-use demo builds), ``_ui`` (kept results, status box, charts, captions),
``_forms`` (number inputs from :mod:`lldd_core.ranges`, the prompt box), ``_datasets`` (the concept
dataset picker).
"""
