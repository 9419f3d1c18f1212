"""Dashboard views, one file per page (run by ``st.navigation`` in app.py); ``_common`` holds shared UI helpers."""
