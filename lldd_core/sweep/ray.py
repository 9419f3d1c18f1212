"""The scaling sweep on a Ray cluster (``python -m lldd_core sweep ... --engine ray [--address ADDR]``).

Same cells, settings and results as :func:`lldd_core.sweep.study.run_sweep`, with the work of each
missing cell cut as :mod:`lldd_core.analysis.gains_chunks` cuts it: one *basis* task per cell, then one task
per chunk of evaluation prompts, each with a GPU request when the cluster has GPUs. Workers keep
one model resident (like the service) and never touch the result cache: they return results to
the driver, which stores

* each basis and each chunk as it arrives (keys ``gains-basis`` / ``gains-chunk``), so a sweep
  that stops (Ctrl-C, a crash of the driver or the cluster) resumes without recomputing them;
* the assembled :class:`~lldd_core.analysis.gains.GainsResult` under the very key :meth:`Service.gains`
  uses, so the ``gains`` command, the pages and the local engine find it.

A worker that dies mid-task (killed, out of memory) has its task retried by Ray on another worker
(``max_retries``); an :class:`~lldd_core.errors.LLDDError` in a task marks its cell ``failed``
and the sweep goes on. Ray is an optional extra (``pip install '.[ray]'``); nothing else in
lldd imports it. The lldd package travels to the workers with the job (``py_modules``), and the
``LLDD_*`` / ``HF_*`` settings of the driver with it; models and datasets are read on each node
(hub ids from its Hugging Face cache, local paths from its disk).
"""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..analysis.gains import ANALYSIS as GAINS
from ..analysis.gains_chunks import (
    BASIS,
    CHUNK,
    GainsBasis,
    GainsChunk,
    assemble,
    chunk_ranges,
    gains_basis,
    gains_chunk,
)
from ..analysis.settings import GainsSettings
from ..concepts.data import ConceptData
from ..errors import InputError, LLDDError
from ..models.loading import ModelSpec
from ..store.keys import make_key
from .study import CellStatus, SweepCell, SweepProgress, SweepReport, status_rows

if TYPE_CHECKING:
    from ..analysis.gains import GainsResult
    from ..models.loading import ModelHandle
    from ..service import Service

ENGINES = ("local", "ray")
#: Evaluation prompts per chunk task (the default of ``--chunk-size``).
DEFAULT_CHUNK = 8
#: How often Ray reruns a task whose worker died (a bug or an LLDDError is never retried).
MAX_RETRIES = 3
_ENV_PREFIXES = ("LLDD_", "HF_", "TRANSFORMERS_", "HUGGINGFACE_")

#: ``chunk_hook(start)`` runs in the worker before each chunk (tests kill a worker with it).
ChunkHook = Callable[[int], None]


def import_ray() -> Any:
    """The ``ray`` module, or an :class:`InputError` that says how to get it."""
    try:
        import ray
    except ImportError:
        raise InputError("The Ray engine needs Ray, which is not installed: `pip install '.[ray]'` in the lldd checkout, "
                         "or run the sweep with the default local engine (--engine local).") from None
    return ray


# --- in the workers --------------------------------------------------------------------------------

_RESIDENT: dict[str, Any] = {}


def _worker_handle(spec: ModelSpec) -> ModelHandle:
    """The worker's resident model for ``spec`` (one per worker process, replaced when another is asked)."""
    from ..models.loading import load_model, resolve_model

    if _RESIDENT.get("spec") != spec:
        _RESIDENT.clear()
        gc.collect()
        _RESIDENT.update(spec=spec, handle=load_model(resolve_model(spec)))
    return _RESIDENT["handle"]


def _basis_task(spec: ModelSpec, data: ConceptData, settings: GainsSettings) -> GainsBasis | LLDDError:
    try:
        return gains_basis(_worker_handle(spec), data, settings)
    except LLDDError as err:  # returned, not raised: Ray would retry or wrap it
        return err


def _chunk_task(spec: ModelSpec, data: ConceptData, basis: GainsBasis, start: int, stop: int, eps: float,
                hook: ChunkHook | None) -> GainsChunk | LLDDError:
    if hook is not None:
        hook(start)
    try:
        return gains_chunk(_worker_handle(spec), data, basis, start, stop, eps)
    except LLDDError as err:
        return err


# --- the driver --------------------------------------------------------------------------------


def _runtime_env() -> dict:
    """Ship this lldd package and the driver's lldd / Hugging Face settings to every worker."""
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    return {"py_modules": [str(Path(__file__).resolve().parents[1])], "env_vars": env}


def connect(address: str | None, num_cpus: int | None = None) -> bool:
    """Join the cluster at ``address`` (``"auto"``, ``"ray://host:10001"``, ``host:6379``) or start a local
    one; ``True`` if this call started Ray (the caller shuts it down). An unreachable address is an
    :class:`InputError`."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    if address:
        _check_reachable(address)
    kwargs: dict[str, Any] = {"runtime_env": _runtime_env(), "include_dashboard": False, "log_to_driver": False}
    # "local" starts a new instance even when this machine runs (or ran) another cluster, which a
    # bare ray.init() would try to join
    kwargs["address"] = address or "local"
    if not address and num_cpus is not None:
        kwargs["num_cpus"] = num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError, SystemExit) as err:  # Ray exits when it gives up
        raise InputError(f"Could not reach the Ray cluster at {address or 'a new local instance'}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}. Check --address "
                         "(e.g. 'auto' on a cluster node, or ray://head:10001).") from err
    return True


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``host:port`` address must accept a connection (Ray itself retries for minutes, then exits)."""
    if address == "auto" or address.startswith("ray://"):
        return  # Ray resolves these itself
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        raise InputError(f"Bad Ray address {address!r}: give host:port (e.g. 10.0.0.5:6379), 'auto' on a cluster "
                         "node, or ray://host:10001.")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except OSError as err:
        raise InputError(f"Could not reach the Ray cluster at {address}: {err.strerror or err}. Check --address "
                         "and that the head node runs (`ray start --head`).") from None


@dataclass
class _Work:
    """One missing cell on its way through the cluster."""

    index: int
    cell: SweepCell
    spec: ModelSpec
    data: ConceptData
    keys: dict[str, str]  # "result", "basis"
    chunk_key: Callable[[int, int], str]
    basis: GainsBasis | None = None
    chunks: dict[tuple[int, int], GainsChunk] = field(default_factory=dict)
    expected: int = 0  # chunk tasks counted in the progress total for this cell


def _keys(service: Service, spec: ModelSpec, data: ConceptData, settings: GainsSettings) -> tuple[dict, Callable]:
    info = service.info(spec)
    params = settings.cache_params(data)
    common = {"model": spec.model, "revision": info.revision, "dtype": spec.precision, "input_ids": []}
    basis_params = {k: v for k, v in params.items() if k != "eps"}
    keys = {"result": make_key(GAINS, **common, params=params), "basis": make_key(BASIS, **common, params=basis_params)}
    return keys, lambda a, b: make_key(CHUNK, **common, params={**params, "rows": [int(a), int(b)]})


def run_ray_sweep(
    service: Service, models: Sequence[str], datasets: Sequence[str | ConceptData], *,
    like: ModelSpec | None = None, settings: GainsSettings | None = None,
    address: str | None = None, chunk_size: int = DEFAULT_CHUNK, gpus_per_task: float | None = None,
    num_cpus: int | None = None, progress: SweepProgress | None = None,
    on_cell: Callable[[SweepCell], None] | None = None, chunk_hook: ChunkHook | None = None,
) -> SweepReport:
    """:func:`lldd_core.sweep.study.run_sweep` with the missing cells computed as Ray tasks (module doc).

    ``progress(done, total, message)`` counts tasks (bases and chunks; ``total`` grows to the real
    number of chunks once a cell's basis says how many prompts it evaluates); ``on_cell`` is called
    for every cell once its status is final (cached ones first, computed ones as they complete).
    ``gpus_per_task``: default 1 when the cluster has GPUs, else 0. ``num_cpus`` caps a local cluster
    that this call starts.
    """
    settings = (settings if settings is not None else GainsSettings()).check()
    if chunk_size < 1:
        raise InputError("The chunk size is a number of prompts per task: at least 1.")
    start_time = time.perf_counter()
    rows = status_rows(service, models, datasets, like, settings, download=True)
    cells: list[SweepCell] = [cell for cell, _, _ in rows]
    work: list[_Work] = []
    for i, (cell, spec, data) in enumerate(rows):
        if cell.status == "missing" and data is not None:
            try:
                service.ensure_demo(spec)  # built once here, not by every worker at the same time
                keys, chunk_key = _keys(service, spec, data, settings)
            except LLDDError as err:
                cells[i] = dataclasses.replace(cell, status="failed", message=str(err))
                continue
            work.append(_Work(i, cell, spec, data, keys, chunk_key))
        if on_cell is not None and cells[i].status != "missing":
            on_cell(cells[i])
    if work:
        ray = import_ray()
        started = connect(address, num_cpus)
        try:
            _drive(ray, service, work, cells, settings, chunk_size, gpus_per_task, progress, on_cell, chunk_hook)
        finally:
            if started:
                ray.shutdown()
    elif progress is not None:
        progress(0, 0, "Done")
    return SweepReport(cells, time.perf_counter() - start_time)


def _drive(ray: Any, service: Service, work: list[_Work], cells: list[SweepCell], settings: GainsSettings,
           chunk_size: int, gpus_per_task: float | None, progress: SweepProgress | None,
           on_cell: Callable[[SweepCell], None] | None, chunk_hook: ChunkHook | None) -> None:
    gpus = gpus_per_task if gpus_per_task is not None else (1 if ray.cluster_resources().get("GPU", 0) else 0)
    options = {"num_cpus": 1, "num_gpus": gpus, "max_retries": MAX_RETRIES}
    basis_remote = ray.remote(_basis_task).options(**options)
    chunk_remote = ray.remote(_chunk_task).options(**options)
    eps = settings.eps
    data_refs: dict[int, Any] = {}
    pending: dict[Any, tuple[_Work, tuple[int, int] | None]] = {}
    done = 0
    total = 0

    def report(message: str) -> None:
        if progress is not None:
            progress(done, total, message)

    def finish(w: _Work, status: CellStatus, message: str = "", result: GainsResult | None = None) -> None:
        for ref, (other, _) in list(pending.items()):
            if other is w:
                ray.cancel(ref)
                del pending[ref]
        cell = (SweepCell.from_result(w.cell.model, w.cell.dataset, status, result) if result is not None
                else dataclasses.replace(w.cell, status=status, message=message))
        cells[w.index] = cell
        if on_cell is not None:
            on_cell(cell)

    def submit_chunks(w: _Work) -> None:
        nonlocal total, done
        ranges = chunk_ranges(w.basis.n_prompts, chunk_size)
        total += len(ranges) - w.expected
        w.expected = len(ranges)
        for a, b in ranges:
            stored = service.cache.get(w.chunk_key(a, b))
            if isinstance(stored, GainsChunk):
                w.chunks[(a, b)] = stored
            else:
                pending[chunk_remote.remote(w.spec, data_refs[id(w.data)], w.basis, a, b, eps, chunk_hook)] = (w, (a, b))
        done += len(w.chunks)  # stored by an earlier run
        if len(w.chunks) == len(ranges):
            complete(w)

    def complete(w: _Work) -> None:
        result = assemble(w.basis, list(w.chunks.values()), eps)
        service.cache.set(w.keys["result"], result)
        finish(w, "computed", result=result)

    for w in work:
        if id(w.data) not in data_refs:
            data_refs[id(w.data)] = ray.put(w.data)
        w.expected = math.ceil(settings.n_eval / chunk_size)
        total += w.expected
        stored = service.cache.get(w.keys["basis"])
        if isinstance(stored, GainsBasis):
            w.basis = stored
            submit_chunks(w)
        else:
            total += 1
            pending[basis_remote.remote(w.spec, data_refs[id(w.data)], settings)] = (w, None)
    report(f"{len(pending)} tasks submitted")
    while pending:
        (ref,), _ = ray.wait(list(pending), num_returns=1)
        if ref not in pending:  # cancelled meanwhile
            continue
        w, rows = pending.pop(ref)
        done += 1
        what = f"{w.cell.model} × {w.cell.dataset}"
        try:
            value = ray.get(ref)
        except ray.exceptions.RayError as err:  # retries exhausted, or a bug in a task
            finish(w, "failed", f"A task of this cell failed on the cluster: {str(err).splitlines()[0]}")
            report(f"{what}: failed")
            continue
        if isinstance(value, LLDDError):
            finish(w, "failed", str(value))
        elif rows is None:
            service.cache.set(w.keys["basis"], value)
            w.basis = value
            submit_chunks(w)
        else:
            service.cache.set(w.chunk_key(*rows), value)
            w.chunks[rows] = value
            if len(w.chunks) == w.expected:
                complete(w)
        report(f"{what}: {'basis' if rows is None else f'prompts {rows[0] + 1}-{rows[1]}'}")
    report("Done")
