"""Sending a Steering-lab setting to the Steering page: its widgets' session-state values, then a page switch.

UI only. The Steering page's widgets read their values from session state when they are drawn (the way an
opened permalink seeds them, :mod:`pages.common.link`), so setting the keys below before switching pages opens it
with the method, layer and strength chosen. The keys are the Steering page's (``pages/steering.py``);
``tests/test_app_lab.py`` opens the page after a hand-over and reads the widgets back.
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from pages.common.datasets import REGISTRY

STEERING_PAGE = "pages/steering.py"


def steering_state(row: dict, n_layers: int, dataset: str | None, phrase: str) -> dict[str, Any]:
    """The Steering page's widget values for one lab ``row`` (method, layer, strength; the lab's knob per method)."""
    method, layer, value = row["method"], row["layer"], float(row["strength"])
    state: dict[str, Any] = {"st_methods": [method]}
    if dataset is not None:
        state.update({"st_ds_source": REGISTRY, "st_ds_name": dataset})
    if method == "additive":
        state.update({f"st_add_layers_of_{n_layers}": [int(layer)], "st_add_strength": value,
                      "st_add_positions": "last"})
    elif method == "llv":
        state["st_llv_dy"] = value
    elif method == "jacobian":
        state.update({"st_jac_text": phrase, f"st_jac_layer_of_{n_layers}": int(layer), "st_jac_variant": "additive",
                      "st_jac_lam_additive": value})
    elif method == "lqr":
        qf = row.get("params", {}).get("qf")
        state.update({"st_lqr_q": value, "st_lqr_lam": 1.0, **({"st_lqr_qf": float(qf)} if qf is not None else {})})
    return state


def send_to_steering(row: dict, n_layers: int, dataset: str | None, phrase: str) -> None:
    """Seed the Steering page with ``row``'s setting and open it."""
    st.session_state.update(steering_state(row, n_layers, dataset, phrase))
    st.switch_page(STEERING_PAGE)
