"""CSV exports that a spreadsheet cannot run: formula-leading text cells are neutralized.

Tables hold texts from user datasets, prompts and decoded tokens. A spreadsheet evaluates a cell
that starts with ``=``, ``+``, ``-`` or ``@`` as a formula (``=HYPERLINK(...)`` sends data away),
and a leading tab or carriage return hides such a start. The OWASP rule applies: such a text cell
gets a leading ``'``, which spreadsheets show as text. Numbers stay numbers: numeric columns are
never touched, and a text cell that is a plain decimal number (``-1.5``, ``+2e-3``) is a value,
not a formula, so it is kept as written. Every CSV that lldd writes goes through :func:`csv_text`.
"""

from __future__ import annotations

import re
from typing import Any

import pandas as pd

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""Leading characters that make a spreadsheet treat a cell as a formula (or hide one that does)."""

_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def neutralize_cell(value: Any) -> Any:
    """``value`` with a ``'`` prefix if it is a string a spreadsheet would evaluate; anything else unchanged."""
    if isinstance(value, str) and value.startswith(FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def neutralize(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` whose text cells and column names cannot run as spreadsheet formulas.

    Only object, string and categorical columns are looked at (their string cells); numeric, bool
    and datetime columns are returned as they are.
    """
    out = table.copy()
    for i in range(out.shape[1]):
        series = out.iloc[:, i]
        if isinstance(series.dtype, pd.CategoricalDtype):
            series = series.astype(object)
        elif not (pd.api.types.is_object_dtype(series.dtype) or pd.api.types.is_string_dtype(series.dtype)):
            continue
        out.isetitem(i, series.map(neutralize_cell))
    out.columns = [neutralize_cell(c) for c in out.columns]
    return out


def csv_text(table: pd.DataFrame) -> str:
    """``table`` as CSV text (no index) with formula-leading text cells neutralized (:func:`neutralize`).

    Rows end in CRLF (RFC 4180), which also makes the writer quote any cell holding a carriage
    return: with a bare ``\n`` terminator a ``\r`` inside a text would start a new row in a spreadsheet.
    """
    return neutralize(table).to_csv(index=False, lineterminator="\r\n")
