"""The Ray sweep engine on a real local Ray cluster (CPU, tiny models): same results as the local engine,
resumption without recomputing stored chunks, a killed worker's chunk retried, progress reported."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from lldd_core.analysis.settings import GainsSettings
from lldd_core.cli.main import main
from lldd_core.concepts.catalog import load
from lldd_core.errors import InputError
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.store.cache import ResultCache
from lldd_core.sweep.ray import _keys, connect, import_ray, run_ray_sweep
from lldd_core.sweep.study import run_sweep

SETTINGS = GainsSettings(order=4, n_eval=5, sizes=(6, 4, 5))
DATASETS = ["sentiment", "politeness"]
ARRAYS = ("predicted", "measured", "exact", "directions", "spearman", "pearson")


def test_unreachable_cluster_is_explained():
    """Runs before the module's cluster starts: nothing to join at this address."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    with pytest.raises(InputError, match="Could not reach the Ray cluster at 127.0.0.1:9"):
        connect("127.0.0.1:9")
    with pytest.raises(InputError, match="host:port"):
        connect("somewhere")
    assert not ray.is_initialized()


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray instance (2 CPUs) for the module; run_ray_sweep joins it and leaves it running."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    assert connect(None, num_cpus=2)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def models(tiny_dirs) -> list[str]:
    return [str(tiny_dirs["gpt2"]), str(tiny_dirs["llama"])]


@pytest.fixture(scope="module")
def local_results(models, tmp_path_factory):
    """The local engine's results, the reference (float64)."""
    service = Service(ResultCache(tmp_path_factory.mktemp("local-cache")))
    report = run_sweep(service, models, DATASETS, like=_like(), settings=SETTINGS)
    assert report.complete
    return {(m, d): service.cached_gains(_spec(m), d, SETTINGS) for m in models for d in DATASETS}


def _like() -> ModelSpec:
    return ModelSpec("unused", dtype="float64", device="cpu")


def _spec(model: str) -> ModelSpec:
    return ModelSpec(model, dtype="float64", device="cpu")


def _assert_same(got, want) -> None:
    for name in ARRAYS:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-12, err_msg=name,
                                   equal_nan=True)
    assert (got.prompts, got.layers, got.n_params, got.split_sizes) == (want.prompts, want.layers, want.n_params,
                                                                        want.split_sizes)


def _log_starts(path: Path):
    """A chunk hook (runs in the workers) that appends each chunk's first prompt to ``path``."""

    def hook(start: int) -> None:
        with open(path, "a") as fh:
            fh.write(f"{start}\n")

    return hook


def test_ray_sweep_equals_local_and_resumes_without_recomputing(ray_cluster, models, local_results, tmp_path):
    service = Service(ResultCache(tmp_path / "cache"))
    seen: list[tuple[int, int]] = []
    finished = []
    report = run_ray_sweep(service, models, DATASETS, like=_like(), settings=SETTINGS, chunk_size=2,
                           progress=lambda done, total, msg: seen.append((done, total)), on_cell=finished.append)
    assert [c.status for c in report.cells] == ["computed"] * 4 and len(finished) == 4
    # progress: 4 bases + 4 cells x 3 chunks, counted up to the total
    assert seen[-1] == (16, 16) and all(a <= b for a, b in seen)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    for (model, dataset), want in local_results.items():
        got = service.cached_gains(_spec(model), dataset, SETTINGS)  # the gains command's key
        _assert_same(got, want)
    # the local engine (and the gains command) now find every cell cached
    assert all(c.status == "cached" for c in run_sweep(service, models, DATASETS, like=_like(),
                                                       settings=SETTINGS).cells)

    # a crash lost one cell's result and one of its chunks: only that chunk is recomputed
    model, dataset = models[1], DATASETS[0]
    keys, chunk_key = _keys(service, _spec(model), load(dataset), SETTINGS)
    service.cache._discard(keys["result"])
    service.cache._discard(chunk_key(2, 4))
    log = tmp_path / "starts.txt"
    seen.clear()
    again = run_ray_sweep(service, models, DATASETS, like=_like(), settings=SETTINGS, chunk_size=2,
                          chunk_hook=_log_starts(log), progress=lambda done, total, msg: seen.append((done, total)))
    assert [c.status for c in again.cells] == ["cached", "cached", "computed", "cached"]
    assert log.read_text().split() == ["2"]  # no basis task, no other chunk
    assert seen[-1] == (3, 3)  # the stored chunks count as done
    _assert_same(service.cached_gains(_spec(model), dataset, SETTINGS), local_results[model, dataset])


def test_interrupted_ray_sweep_keeps_finished_chunks(ray_cluster, models, local_results, tmp_path):
    service = Service(ResultCache(tmp_path / "cache"))

    def stop(cell):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_ray_sweep(service, models[:1], DATASETS, like=_like(), settings=SETTINGS, chunk_size=2, on_cell=stop)
    stored = [k for k in service.cache.keys() if k.startswith(("gains-basis:", "gains-chunk:"))]
    assert stored  # whatever finished before the interrupt is kept
    log = tmp_path / "starts.txt"
    report = run_ray_sweep(service, models[:1], DATASETS, like=_like(), settings=SETTINGS, chunk_size=2,
                           chunk_hook=_log_starts(log))
    assert report.complete
    n_chunks = sum(k.startswith("gains-chunk:") for k in stored)
    assert len(log.read_text().split()) == 6 - n_chunks  # only the chunks that were not stored
    for dataset in DATASETS:
        _assert_same(service.cached_gains(_spec(models[0]), dataset, SETTINGS),
                     local_results[models[0], dataset])


def test_killed_worker_chunk_is_retried(ray_cluster, models, local_results, tmp_path):
    marker = tmp_path / "killed"

    def kill_once(start: int) -> None:
        if start == 2 and not marker.exists():
            marker.write_text(str(os.getpid()))
            os._exit(1)  # the worker process dies mid-task, as if killed

    service = Service(ResultCache(tmp_path / "cache"))
    report = run_ray_sweep(service, models[:1], DATASETS[:1], like=_like(), settings=SETTINGS, chunk_size=2,
                           chunk_hook=kill_once)
    assert marker.exists() and report.complete
    _assert_same(service.cached_gains(_spec(models[0]), DATASETS[0], SETTINGS),
                 local_results[models[0], DATASETS[0]])


def test_failing_cell_is_recorded_and_the_others_finish(ray_cluster, models, tmp_path):
    service = Service(ResultCache(tmp_path / "cache"))
    settings = GainsSettings(order=40, n_eval=2, sizes=(6, 4, 3))  # order 40 > d = 32: an InputError in the task
    report = run_ray_sweep(service, models[:1], ["sentiment"], like=_like(), settings=settings)
    (cell,) = report.cells
    assert cell.status == "failed" and "order" in cell.message


def test_cpu_path_without_ray_explains_the_extra(models, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the optional extra were not installed
    with pytest.raises(InputError, match=r"pip install '\.\[ray\]'"):
        import_ray()
    monkeypatch.setenv("LLDD_CACHE_DIR", str(tmp_path / "cache"))
    from lldd_core import service as service_module

    monkeypatch.setattr(service_module, "_SERVICE", None)
    code = main(["sweep", "--models", models[0], "--datasets", "sentiment", "--engine", "ray", "--order", "4",
                 "--n-eval", "2", "--sizes", "6,4,3", "--device", "cpu", "--quiet"])
    assert code == 2 and "'.[ray]'" in capsys.readouterr().err


def test_cli_ray_engine_fills_the_same_cache(ray_cluster, models, tmp_path, monkeypatch, capsys):
    import json

    from lldd_core import service as service_module

    monkeypatch.setenv("LLDD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(service_module, "_SERVICE", None)
    args = ["sweep", "--models", models[0], "--datasets", "sentiment", "--order", "4", "--n-eval", "5", "--sizes",
            "6,4,5", "--dtype", "float64", "--device", "cpu", "--json", "-"]
    assert main([*args, "--engine", "ray", "--chunk-size", "2"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["cells"][0]["status"] == "computed"
    assert "task" in out.err and "[computed]" in out.err  # the progress bar counts tasks; a line per cell
    assert main(args) == 0  # the local engine finds the cell
    assert json.loads(capsys.readouterr().out)["cells"][0]["status"] == "cached"
