"""The scaling sweep (:mod:`lldd_core.sweep.study`), its CLI command and its figures, on a tiny GPT-2 family.

Three saved GPT-2 models of growing size stand in for a family (local paths are model names); tiny
settings keep every cell well under a second.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config

from lldd_core import service as service_module
from lldd_core.analysis.settings import GainsSettings
from lldd_core.cli.main import main
from lldd_core.models.loading import ModelSpec
from lldd_core.plots.scaling import PAPER_GPT2, TABLE_COLUMNS, cells_table, scaling_figure
from lldd_core.service import Service
from lldd_core.sweep.study import (
    FAMILIES,
    SweepCell,
    fill_params,
    parse_list,
    run_sweep,
    summary_line,
    sweep_status,
)
from tests.tiny import VOCAB, build_tokenizer, randomized

SETTINGS = GainsSettings(order=4, n_eval=2, sizes=(6, 4, 3))
LIKE = ModelSpec("unused", device="cpu")
DATASETS = ["sentiment", "topic"]
#: (hidden size, layers) of the tiny family, smallest first.
SHAPES = ((16, 2), (32, 3), (48, 3))
SETTING_ARGS = ["--order", "4", "--n-eval", "2", "--sizes", "6,4,3", "--device", "cpu"]


def save_gpt2(directory: Path, n_embd: int, n_layer: int, seed: int = 0) -> Path:
    """A tiny random GPT-2 (random non-zero biases) with the tests' tokenizer, saved to ``directory``."""
    config = GPT2Config(vocab_size=VOCAB, n_embd=n_embd, n_layer=n_layer, n_head=4, n_positions=64,
                        initializer_range=0.2, bos_token_id=1, eos_token_id=2, activation_function="gelu_new")
    torch.manual_seed(seed)
    model = randomized(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval(), norms=False)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory


def save_family(root: Path) -> list[str]:
    """The tiny family's model directories (as model names), smallest first."""
    return [str(save_gpt2(root / f"gpt2-{d}x{n}", d, n)) for d, n in SHAPES]


@pytest.fixture(scope="module")
def family(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    return save_family(tmp_path_factory.mktemp("family"))


@pytest.fixture()
def service(cache_dir: Path):
    svc = Service()  # on this test's empty cache (LLDD_CACHE_DIR)
    yield svc
    svc.cache.close()


@pytest.fixture()
def counted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The models each gains computation (a cache miss) ran on, in order."""
    calls: list[str] = []
    analyze = service_module.analyze_gains

    def counting(handle, data, *args, **kwargs):
        calls.append(handle.spec.model)
        return analyze(handle, data, *args, **kwargs)

    monkeypatch.setattr(service_module, "analyze_gains", counting)
    return calls


def test_families_and_lists() -> None:
    assert FAMILIES["gpt2"] == ["gpt2", "gpt2-medium", "gpt2-large"]  # the LLV paper's family
    assert FAMILIES["demo"] == ["demo:gpt2-small", "demo:gpt2-medium", "demo:gpt2-large"]
    assert all(m.startswith("EleutherAI/pythia-") for m in FAMILIES["pythia"])
    assert parse_list(" a, b,,a , c ") == ["a", "b", "c"]
    with pytest.raises(Exception, match=r"reduced order d .*must be an integer from 1"):
        GainsSettings(order=0).check()


def test_status_of_an_empty_cache_is_all_missing(service: Service, family: list[str], counted: list[str],
                                                  monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    cells = sweep_status(service, family, DATASETS, like=LIKE, settings=SETTINGS)
    assert [(c.model, c.dataset) for c in cells] == [(m, d) for m in family for d in DATASETS]  # model-major
    assert {c.status for c in cells} == {"missing"} and not any(c.done for c in cells)
    assert all(c.n_params is None and c.mean_spearman is None for c in cells)
    assert service.resident is None and counted == []  # nothing loaded, nothing computed
    # a hub dataset that is not downloaded: with the hub reachable it is "missing" (nothing is fetched)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    (cell,) = sweep_status(service, family[:1], ["sst2"], like=LIKE, settings=SETTINGS)
    assert cell.status == "missing" and "downloads it" in cell.message


def test_run_sweep_fills_the_same_cache_as_gains(service: Service, family: list[str], counted: list[str]) -> None:
    steps: list[tuple[int, int, str]] = []
    seen: list[SweepCell] = []
    report = run_sweep(service, family, DATASETS, like=LIKE, settings=SETTINGS,
                       progress=lambda d, n, m: steps.append((d, n, m)), on_cell=seen.append)
    assert [c.status for c in report.cells] == ["computed"] * 6 and report.complete
    assert seen == report.cells
    assert counted == [m for m in family for _ in DATASETS]  # model-major: each model loaded once
    assert [s[:2] for s in steps] == [(i, 6) for i in range(7)] and steps[-1][2] == "Done"
    assert f"{family[0]} × sentiment" in steps[0][2]
    sizes = [c.n_params for c in report.cells[::2]]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3
    assert [c.n_layers for c in report.cells[::2]] == [n for _, n in SHAPES]
    assert [c.d_model for c in report.cells[::2]] == [d for d, _ in SHAPES]

    status = sweep_status(service, family, DATASETS, like=LIKE, settings=SETTINGS)
    assert [c.status for c in status] == ["cached"] * 6
    for cell, computed in zip(status, report.cells):
        same = {k: v for k, v in computed.as_dict().items() if k not in ("status", "split_sizes")}
        assert {k: v for k, v in cell.as_dict().items() if k not in ("status", "split_sizes")} == pytest.approx(
            same, nan_ok=True)
        assert cell.split_sizes == computed.split_sizes == {"concept": 6, "operating": 4, "evaluation": 3}
    # the gains command and page ask the service the same question: a cache hit with the same numbers
    for cell in status:
        got = service.gains(ModelSpec(cell.model, device="cpu"), cell.dataset, SETTINGS)
        assert got.cache_hit
        assert got.result.n_params == cell.n_params
        assert math.isclose(got.result.mean_spearman, cell.mean_spearman) or np.isnan(cell.mean_spearman)
    assert len(counted) == 6
    assert summary_line(status) == "6 cells: 6 cached"


def test_an_interrupted_sweep_resumes_where_it_stopped(service: Service, family: list[str],
                                                       counted: list[str]) -> None:
    def stop_after_first(cell: SweepCell) -> None:
        if cell.status == "computed":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_sweep(service, family, DATASETS, like=LIKE, settings=SETTINGS, on_cell=stop_after_first)
    assert len(counted) == 1
    steps: list[tuple[int, int, str]] = []
    report = run_sweep(Service(service.cache), family, DATASETS, like=LIKE, settings=SETTINGS,
                       progress=lambda d, n, m: steps.append((d, n, m)))
    assert [c.status for c in report.cells] == ["cached"] + ["computed"] * 5
    assert len(counted) == 6  # only the five remaining cells were computed
    assert steps[0][:2] == (0, 5) and steps[-1][:2] == (5, 5)
    again = run_sweep(service, family, DATASETS, like=LIKE, settings=SETTINGS)
    assert {c.status for c in again.cells} == {"cached"} and len(counted) == 6


def test_unavailable_and_failed_cells_do_not_stop_the_sweep(service: Service, family: list[str], tmp_path: Path,
                                                            counted: list[str]) -> None:
    models = [family[0], str(tmp_path / "no-such-model"), "demo:no-such-demo", family[1]]
    datasets = ["sentiment", "sst2", "no_such_dataset"]
    # order 20 exceeds the smallest model's hidden size (16): its cells fail, the others compute
    settings = GainsSettings(order=20, n_eval=2, sizes=(6, 4, 3))
    report = run_sweep(service, models, datasets, like=LIKE, settings=settings)
    status = {(c.model, c.dataset): c for c in report.cells}
    assert status[(family[0], "sentiment")].status == "failed"
    assert "order d (--order) must be an integer from 1 to the hidden size 16; got 20" in status[(family[0], "sentiment")].message
    assert status[(family[1], "sentiment")].status == "computed"
    for model in models:
        assert status[(model, "sst2")].status == "unavailable"
        assert status[(model, "no_such_dataset")].status == "unavailable"
    assert "not available offline" in status[(family[0], "sst2")].message
    assert "unknown dataset 'no_such_dataset'" in status[(family[1], "no_such_dataset")].message
    assert "No model directory" in status[(models[1], "sentiment")].message
    assert "There is no demo model 'no-such-demo'" in status[(models[2], "sentiment")].message
    assert all(c.message for c in report.cells if not c.done)
    assert counted == [family[1]] and not report.complete  # the too-small model is refused before loading
    assert report.count("unavailable") == 10 and report.count("failed") == 1


def test_a_demo_model_to_build_is_missing_and_a_failed_build_is_recorded(
        service: Service, family: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import lldd_core.models.loading as models_module

    monkeypatch.setenv("LLDD_DEMO_DIR", str(tmp_path / "demo"))  # no demo model built there
    models = ["demo:gpt2-small", family[0]]
    cells = sweep_status(service, models, ["sentiment"], like=LIKE, settings=SETTINGS)
    assert [c.status for c in cells] == ["missing", "missing"] and "not built yet" in cells[0].message
    assert not (tmp_path / "demo").exists()  # the status never builds

    def full_disk(name, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models_module, "build_demo", full_disk)
    steps: list[str] = []
    report = run_sweep(service, models, ["sentiment"], like=LIKE, settings=SETTINGS,
                       progress=lambda d, n, m: steps.append(m))
    assert [c.status for c in report.cells] == ["failed", "computed"]
    assert "No space left on device" in report.cells[0].message and "LLDD_DEMO_DIR" in report.cells[0].message
    assert steps[0] == "demo:gpt2-small × sentiment (building the demo model first)"


def test_cli_sweep_json_exit_codes_and_resume(capsys, family: list[str], cache_dir: Path, counted: list[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_module, "_SERVICE", None)
    base = ["sweep", "--models", ",".join(family[:2]), "--datasets", "sentiment,topic", *SETTING_ARGS]
    code = main([*base, "--status-only", "--json", "-"])
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 1 and "run without --status-only" in err
    assert [c["status"] for c in data["cells"]] == ["missing"] * 4 and data["complete"] is False
    assert data["settings"] == SETTINGS.as_dict() and counted == []

    # Ctrl-C during the second cell: the first stays cached, the message says how to resume
    analyze = service_module.analyze_gains

    def interrupt_second(handle, data, *args, **kwargs):
        if len(counted) == 1:  # the first cell is done
            raise KeyboardInterrupt
        return analyze(handle, data, *args, **kwargs)

    monkeypatch.setattr(service_module, "analyze_gains", interrupt_second)
    code = main([*base, "--quiet"])
    out, err = capsys.readouterr()
    assert code == 130 and "Resume with the same command" in err and "python -m lldd_core sweep --models" in err
    monkeypatch.setattr(service_module, "analyze_gains", analyze)

    code = main([*base, "--json", "-"])  # progress bars on stderr, JSON on stdout
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert code == 0 and data["complete"] is True
    assert [c["status"] for c in data["cells"]] == ["cached", "computed", "computed", "computed"]
    assert data["counts"] == {"cached": 1, "computed": 3, "missing": 0, "unavailable": 0, "failed": 0}
    assert all(isinstance(c["n_params"], int) and c["n_layers"] == 2 for c in data["cells"][:2])
    assert "[computed]" in err and "sweep" in err

    code = main([*base, "--status-only"])  # a table on stdout
    out, err = capsys.readouterr()
    assert code == 0 and err == ""
    header, *rows = out.splitlines()
    assert header.split() == ["model", "params", "dataset", "status", "Spearman", "Pearson"]
    assert [r.split()[3] for r in rows[:4]] == ["cached"] * 4 and rows[4].startswith("4 cells: 4 cached in")

    code = main(["sweep", "--models", f"{family[0]},{cache_dir / 'nothing-here'}", "--datasets", "sentiment",
                 *SETTING_ARGS, "--quiet"])
    out, err = capsys.readouterr()
    assert code == 1 and "not complete: 1 unavailable of 2 cells" in err
    assert "No model directory" in out and "1 cached, 1 unavailable" in out

    code = main(["sweep", "--models", " , ", "--datasets", "sentiment"])
    assert code == 2 and capsys.readouterr().err.startswith("error: No models")
    code = main(["sweep", "--family", "demo", "--datasets", "sentiment", "--sizes", "1,2"])
    assert code == 2 and "argument --sizes: must be" in capsys.readouterr().err
    assert main(["sweep", "--family", "nope"]) == 2  # argparse's refusal: one error line
    assert capsys.readouterr().err.startswith("error: argument --family: invalid choice: 'nope'")


def _cell(model: str, dataset: str, n: int | None, sp: float | None, pe: float | None,
          status: str = "cached") -> SweepCell:
    return SweepCell(model, dataset, status, n_params=n, mean_spearman=sp, mean_pearson=pe)  # type: ignore[arg-type]


def test_figure_and_table_show_the_cells_numbers() -> None:
    cells = [
        _cell("big", "sentiment", 3000, 0.9, 0.8), _cell("big", "topic", 3000, float("nan"), 0.5),
        _cell("small", "sentiment", 100, 0.2, 0.1), _cell("small", "topic", None, None, None, "missing"),
        _cell("mid", "sentiment", None, None, None, "unavailable"), _cell("mid", "topic", 700, 0.4, 0.3),
    ]
    fig = scaling_figure(cells)
    traces = {(t.name, t.xaxis): t for t in fig.data}
    assert set(traces) == {("sentiment", "x"), ("topic", "x"), ("sentiment", "x2"), ("topic", "x2")}
    sent, topic = traces[("sentiment", "x")], traces[("topic", "x")]
    assert list(sent.x) == [100, 3000] and list(sent.y) == [0.2, 0.9] and list(sent.text) == ["small", "big"]
    assert list(topic.x) == [700, 3000] and topic.y[0] == 0.4 and math.isnan(topic.y[1])
    assert list(traces[("sentiment", "x2")].y) == [0.1, 0.8] and list(traces[("topic", "x2")].y) == [0.3, 0.5]
    assert fig.layout.xaxis.type == "log" and fig.layout.xaxis2.type == "log"
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    paper = scaling_figure(cells, paper=True)
    ref = [t for t in paper.data if t.name == "LLV paper, GPT-2 family"]
    assert len(ref) == 2 and list(ref[0].y) == [v[1] for v in PAPER_GPT2.values()]
    json.loads(paper.to_json())  # serializable (NaN as null)

    table = cells_table(fill_params(cells))
    assert tuple(table.columns) == TABLE_COLUMNS and len(table) == 6
    assert table["parameters"].tolist() == [3000, 3000, 100, 100, 700, 700]  # filled from the model's other cell
    assert table["status"].tolist()[3:5] == ["missing", "unavailable"]
    assert cells_table(cells)["parameters"].isna().tolist() == [False, False, False, True, True, False]
    np.testing.assert_array_equal(table["mean Spearman"].to_numpy(), [0.9, np.nan, 0.2, np.nan, np.nan, 0.4])
