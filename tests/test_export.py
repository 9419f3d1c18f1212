"""CSV exports: formula-leading text cells are neutralized in every CSV lldd writes; numbers stay numbers."""

from __future__ import annotations

import ast
import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lldd_core.concepts.data import ConceptData
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.gains import curves_table, prompt_table
from lldd_core.plots.scaling import cells_table
from lldd_core.service import get_service
from lldd_core.store.export import csv_text, neutralize, neutralize_cell
from lldd_core.sweep.study import SweepCell

ROOT = Path(__file__).resolve().parent.parent
#: What a spreadsheet would run (or what hides a formula), and what it is once neutralized.
HOSTILE = ['=HYPERLINK("http://x","y")', "+1+1", "@SUM(A1)", "-2+3", "\t=1+2", "\r=1+2", "=cmd|' /C calc'!A0"]


def rows(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("cell", HOSTILE)
def test_formula_leading_text_gets_a_quote(cell: str) -> None:
    assert neutralize_cell(cell) == "'" + cell
    (row,) = rows(csv_text(pd.DataFrame({"text": [cell], "x": [1.0]})))
    assert row["text"] == "'" + cell and row["x"] == "1.0"


@pytest.mark.parametrize("value", ["plain text", "", "'=already quoted", "a=b", "-1.5", "+2e-3", "-.5", "7", -3, -2.5,
                                   None, True])
def test_harmless_values_and_plain_numbers_are_kept(value) -> None:
    assert neutralize_cell(value) is value


def test_numeric_columns_and_negative_numbers_are_untouched() -> None:
    table = pd.DataFrame({
        "text": HOSTILE,
        "float": -np.arange(len(HOSTILE), dtype=float) - 0.25,
        "int": -np.arange(len(HOSTILE)),
        "nullable": pd.array([-1, None, *range(len(HOSTILE) - 2)], dtype="Int64"),
        "category": pd.Categorical(["=a", "b", "-3", "x", "y", "z", "@w"]),
        "mixed": [-1, "=x", None, 2.5, "y", np.nan, "+q"],
    })
    out = neutralize(table)
    for column in ("float", "int", "nullable"):
        assert out[column].dtype == table[column].dtype
        pd.testing.assert_series_equal(out[column], table[column])
    assert list(out["text"]) == ["'" + c for c in HOSTILE]
    assert list(out["category"]) == ["'=a", "b", "-3", "x", "y", "z", "'@w"]
    assert out["mixed"].tolist()[:2] == [-1, "'=x"] and out["mixed"].tolist()[6] == "'+q"
    parsed = pd.read_csv(io.StringIO(csv_text(table)))
    np.testing.assert_array_equal(parsed["float"].to_numpy(), table["float"].to_numpy())
    np.testing.assert_array_equal(parsed["int"].to_numpy(), table["int"].to_numpy())
    pd.testing.assert_frame_equal(table, table.copy())  # the caller's table is not modified
    assert table["text"].tolist() == HOSTILE


def test_a_carriage_return_in_a_text_cannot_start_a_row() -> None:
    text = csv_text(pd.DataFrame({"text": ["a\r=1+2", "b\n@x"], "x": [1, 2]}))
    assert [r["text"] for r in rows(text)] == ["a\r=1+2", "b\n@x"]  # quoted; not formula-leading
    assert text.count("\r\n") == 3 and text.replace("\r\n", "").count("\r") == 1


def test_column_names_are_neutralized() -> None:
    text = csv_text(pd.DataFrame({"=1+1": ["a"], "name": ["b"]}))
    assert text.split("\r\n")[0] == "'=1+1,name"


def hostile_dataset(n: int = 12) -> ConceptData:
    """Texts that all start like formulas, two classes of distinct sentences."""
    words = ["good", "bad", "fine", "poor", "great", "awful"]
    texts = [f"{HOSTILE[i % 4]} the film was {words[i % 6]} {i}" for i in range(2 * n)]
    return ConceptData(name="=evil", source="test", texts=tuple(texts), labels=np.array([1, 0] * n),
                       classes=("=pos", "-neg"))


def test_gain_tables_from_a_hostile_dataset_are_neutralized(tiny_dirs, fresh_service) -> None:
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    result = get_service().gains(spec, hostile_dataset(), order=4, n_eval=3, sizes=(6, 4, 2)).result
    assert all(p.startswith(tuple("=+@-")) for p in result.prompts)
    prompts = rows(csv_text(prompt_table(result)))
    assert [r["text"] for r in prompts] == ["'" + p for p in result.prompts]
    spearman = [float(r["Spearman"] or "nan") for r in prompts]  # a constant curve has none (NaN: empty)
    np.testing.assert_array_equal(spearman, np.asarray(result.spearman, dtype=float))
    curves = rows(csv_text(curves_table(result)))
    assert all(r["text"].startswith("'") for r in curves)
    np.testing.assert_array_equal([float(r["measured"] or "nan") for r in curves],
                                  np.asarray(result.measured, dtype=float).ravel())


def test_scaling_cells_table_neutralizes_names_and_notes() -> None:
    cell = SweepCell(model="@model", dataset="=HYPERLINK(\"http://x\",\"y\")", status="failed", message="-2+3 failed",
                     n_params=-1, mean_spearman=-0.5)
    (row,) = rows(csv_text(cells_table([cell])))
    assert (row["model"], row["dataset"], row["note"]) == ("'@model", "'=HYPERLINK(\"http://x\",\"y\")", "'-2+3 failed")
    assert (row["parameters"], row["mean Spearman"]) == ("-1", "-0.5")


def _calls(tree: ast.AST):
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)]


def test_every_csv_download_and_writer_goes_through_the_helper() -> None:
    """No ``to_csv`` or ``csv.writer`` outside lldd_core/store/export.py; every CSV download button uses csv_text."""
    sources = [*sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "lldd_core").rglob("*.py")), ROOT / "app.py"]
    csv_buttons = 0
    for path in sources:
        if path.name == "export.py":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        for call in _calls(tree):
            func = call.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            module = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
            assert name != "to_csv" and not (module == "csv" and name in ("writer", "DictWriter")), \
                f"{path.name}:{call.lineno} writes CSV directly"
            if name != "download_button":
                continue
            kw = {k.arg: k.value for k in call.keywords}
            mime = kw.get("mime")
            if not (isinstance(mime, ast.Constant) and mime.value == "text/csv"):
                continue
            csv_buttons += 1
            data = kw["data"]
            body = data.body if isinstance(data, ast.Lambda) else data
            assert isinstance(body, ast.Call) and getattr(body.func, "id", "") == "csv_text", \
                f"{path.name}:{call.lineno}: CSV download data must be csv_text(...)"
    assert csv_buttons >= 10  # steering, layers ×2, gains ×3, scaling, control ×2, the jacobian page's helper
