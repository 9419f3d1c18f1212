"""examples/quickstart.ipynb: stored clean, and executed offline on a local kernel so it never rots.

The kernel runs the notebook as a user would (model ``demo:gpt2-small``, the default), with the demo
model the ``demo_default`` fixture built (``LLDD_DEMO_DIR`` points at it, so nothing is built here) and
a fresh result cache, so every analysis is computed, not read back.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"
PLOTLY = "application/vnd.plotly.v1+json"
#: The figure builders the notebook shows, each from lldd's plotting modules.
FIGURES = ("reconstruction_scatter", "token_contribution_figure", "spectrum_figure", "mean_curves_figure",
           "prompt_curves_figure", "readout_figure", "steering_schedule_figure", "graph_figure")


def _code(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_notebook_is_stored_without_outputs_and_plots_only_through_lldd():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    for cell in _code(nb):
        assert cell.outputs == [] and cell.execution_count is None, "store the notebook without outputs"
    source = "\n".join(cell.source for cell in _code(nb))
    assert not re.search(r"^\s*(import|from)\s+(plotly|matplotlib|torch)\b", source, re.MULTILINE), \
        "figures come from lldd_core.plots, analyses from the public API"
    for name in FIGURES:
        assert re.search(rf"^from lldd_core\.plots(\.\w+)? import .*\b{name}\b", source, re.MULTILINE), name
    assert "get_service()" in source and 'os.environ.get("LLDD_NOTEBOOK_MODEL", "demo:gpt2-small")' in source


def test_notebook_executes_on_the_demo_model(demo_default, tmp_path, monkeypatch):
    monkeypatch.delenv("LLDD_NOTEBOOK_MODEL", raising=False)  # the notebook's own default: demo:gpt2-small
    monkeypatch.setenv("LLDD_DEMO_DIR", str(demo_default.parent))
    monkeypatch.setenv("LLDD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the kernel imports this checkout's lldd_core
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("MKL_NUM_THREADS", "1")
    built = sorted(p.name for p in demo_default.parent.iterdir())
    nb = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(nb, timeout=180, startup_timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # a failing cell raises CellExecutionError with its traceback

    cells = _code(nb)
    figures = [name for cell in cells for name in FIGURES
               if re.search(rf"^{name}\(", cell.source, re.MULTILINE)
               and any(PLOTLY in out.get("data", {}) for out in cell.outputs)]
    assert sorted(figures) == sorted(FIGURES), "every figure cell shows a plotly figure"
    stdout = "".join(out.get("text", "") for cell in cells for out in cell.outputs if out.output_type == "stream")
    assert "demo:gpt2-small: GPT-2, 4 layers, d = 128" in stdout
    detached, ordinary = map(float, re.search(r"detached (\S+), ordinary Jacobian (\S+)", stdout).groups())
    assert detached < 1e-5 and ordinary > 0.01  # the detached Jacobians reproduce the output, the ordinary ones do not
    unsteered = re.search(r"^unsteered: (.*)$", stdout, re.MULTILINE).group(1)
    steered = re.search(r"^steered: +(.*)$", stdout, re.MULTILINE).group(1)
    assert unsteered.strip() and steered != unsteered
    score = float(re.search(r"replacement score (\S+);?", stdout).group(1).rstrip(";"))
    assert math.isfinite(score)  # the share of the (signed) target logits the pruned graph keeps
    assert re.search(r"^strongest path: [EB]_\d+( -> \S+)* -> L_\d+ \(share ", stdout, re.MULTILINE)
    assert (tmp_path / "cache" / "cache.db").exists()  # the fresh cache was the one used
    assert sorted(p.name for p in demo_default.parent.iterdir()) == built  # the fixture's model, nothing built
