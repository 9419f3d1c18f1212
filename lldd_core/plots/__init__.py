"""Figures: one module per result family, plotly only, no streamlit."""
