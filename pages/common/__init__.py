"""UI helpers the views share, kept out of ``pages/``'s top level so Streamlit never serves them as pages.

``sidebar`` (model picker and settings, cache), ``build`` (first-use demo builds), ``ui`` (kept results,
status box, charts, captions), ``forms`` (number inputs from :mod:`lldd_core.ranges`, the prompt box),
``datasets`` (the concept dataset picker), ``nav`` (how a view runs under app.py), ``link`` (permalinks).
"""
