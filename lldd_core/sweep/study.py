"""The scaling study: LLV gain-curve agreement of every model of a family on every dataset.

One *cell* is a ``(model, dataset)`` pair analysed by :meth:`lldd_core.service.Service.gains` with
the same settings as ``python -m lldd_core gains`` and the Gain curves page, so the three share
the result cache: whatever one of them computed, the others find.

* :func:`sweep_status` says, from the cache alone, which cells are ``cached``, ``missing`` or
  ``unavailable`` (it resolves configs and tokenizers, never loads weights or builds a demo model);
* :func:`run_sweep` computes the missing cells in order, model-major (each model is loaded once).
  Every result is stored as soon as its cell completes, so a sweep that stops (Ctrl-C, a closed
  browser tab, an error) resumes by running it again: cached cells are skipped without loading
  their model. An error a user can cause (:class:`~lldd_core.errors.LLDDError`) in one cell is
  recorded as ``failed`` and the sweep goes on.

A model is a hub id, a local directory or ``demo:<name>``; a dataset a registry name (see
:func:`lldd_core.concepts.catalog.list_datasets`), the path of a CSV/JSONL file, or loaded
:class:`~lldd_core.concepts.data.ConceptData` (the cache key holds the data's fingerprint, so all three
forms of the same data share a cell's result). No streamlit here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ..analysis.settings import GainsSettings
from ..concepts.catalog import load
from ..concepts.data import ConceptData
from ..concepts.files import load_user_file
from ..concepts.hub import cached_split_rows
from ..concepts.registry import REGISTRY
from ..demo import demo_dir
from ..errors import LLDDError
from ..models.loading import ModelSpec

if TYPE_CHECKING:  # types only
    from ..analysis.gains import GainsResult
    from ..progress import ProgressFn
    from ..service import Service

#: The model families of the study, smallest first. ``demo`` needs nothing downloaded (lldd trains
#: the models itself); ``gpt2`` is the LLV paper's family (GPT-2, -medium, -large: Spearman about
#: 0.77, 0.81 and 0.995); ``pythia`` (GPT-NeoX) extends it over a wider range of sizes.
FAMILIES: dict[str, list[str]] = {
    "demo": ["demo:gpt2-small", "demo:gpt2-medium", "demo:gpt2-large"],
    "gpt2": ["gpt2", "gpt2-medium", "gpt2-large"],
    "pythia": ["EleutherAI/pythia-70m", "EleutherAI/pythia-160m", "EleutherAI/pythia-410m", "EleutherAI/pythia-1b"],
}

CellStatus = Literal["cached", "computed", "missing", "unavailable", "failed"]
#: Every status, in the order a summary lists them.
STATUSES: tuple[str, ...] = ("cached", "computed", "missing", "unavailable", "failed")
#: The statuses of a cell that has a result.
DONE: tuple[str, ...] = ("cached", "computed")

#: ``progress(done, total, message)``: cells of the work list finished so far (see :func:`run_sweep`).
SweepProgress = Callable[[int, int, str], None]


@dataclass(frozen=True)
class SweepCell:
    """One ``(model, dataset)`` cell of a sweep.

    ``status``: ``cached`` (a stored result), ``computed`` (by this sweep), ``missing`` (computing
    it will work; a demo model that is not built yet counts here, computing builds it),
    ``unavailable`` (the model or the dataset cannot be resolved here, e.g. a hub model or dataset
    that is not in the local cache offline; ``message`` says why and what to do) or ``failed``
    (the computation raised an error a user can cause; ``message``). The numbers come from the
    :class:`~lldd_core.analysis.gains.GainsResult` and are ``None`` while there is none; ``n_params`` is the
    model's parameter count (the scaling plot's x axis), ``elapsed_s`` the original compute time.
    """

    model: str
    dataset: str
    status: CellStatus
    message: str = ""
    n_params: int | None = None
    n_layers: int | None = None
    d_model: int | None = None
    order: int | None = None
    n_prompts: int | None = None
    mean_spearman: float | None = None
    mean_pearson: float | None = None
    spearman_of_means: float | None = None
    pearson_of_means: float | None = None
    elapsed_s: float | None = None
    #: per class: concept / operating / evaluation examples the result's splits used
    split_sizes: dict[str, int] | None = None

    @property
    def done(self) -> bool:
        """The cell has a result (``cached`` or ``computed``)."""
        return self.status in DONE

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (NaN stays NaN; the CLI maps it to ``null``)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_result(cls, model: str, dataset: str, status: CellStatus, result: GainsResult) -> SweepCell:
        """A ``cached`` or ``computed`` cell with ``result``'s summary numbers."""
        return cls(
            model=model, dataset=dataset, status=status, n_params=int(result.n_params), n_layers=int(result.n_layers),
            d_model=int(result.directions.shape[1]), order=int(result.order), n_prompts=len(result.prompts),
            mean_spearman=float(result.mean_spearman), mean_pearson=float(result.mean_pearson),
            spearman_of_means=float(result.spearman_of_means), pearson_of_means=float(result.pearson_of_means),
            elapsed_s=float(result.elapsed_s), split_sizes={k: int(n) for k, n in result.split_sizes.items()},
        )


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did: every cell in sweep order and the wall time of the run."""

    cells: list[SweepCell]
    elapsed_s: float

    def count(self, status: str) -> int:
        """Cells with ``status``."""
        return sum(c.status == status for c in self.cells)

    @property
    def complete(self) -> bool:
        """Every cell has a result."""
        return all(c.done for c in self.cells)


def family_models(family: str) -> list[str]:
    """The models of ``family`` (a key of :data:`FAMILIES`), smallest first."""
    from ..errors import InputError

    try:
        return list(FAMILIES[family])
    except KeyError:
        raise InputError(f"Unknown family {family!r}: choose one of {', '.join(FAMILIES)}.") from None


def parse_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]`` (comma-separated, blanks dropped, duplicates removed)."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def spec_for(model: str, like: ModelSpec | None = None) -> ModelSpec:
    """``like`` (dtype, device, remote code, pickles; default: a plain float32 spec) for ``model``.

    A revision belongs to one model, not to a family, so it is not carried over.
    """
    like = like if like is not None else ModelSpec(model)
    return dataclasses.replace(like, model=model, revision=None)


def dataset_label(dataset: str | ConceptData) -> str:
    """How a cell names its dataset: the registry name or path as given, or the data's name."""
    return dataset.name if isinstance(dataset, ConceptData) else dataset


def load_data(dataset: str | ConceptData) -> ConceptData:
    """A dataset by registry name or CSV/JSONL path (as the ``gains`` command takes it), loaded.

    Raises :class:`~lldd_core.concepts.data.DatasetUnavailableError` for a hub dataset that is not in the
    local cache offline, :class:`~lldd_core.errors.InputError` for an unknown name or a bad file.
    """
    if isinstance(dataset, ConceptData):
        return dataset
    return load_user_file(dataset) if os.path.isfile(dataset) else load(dataset)


def hub_offline() -> bool:
    """The Hugging Face hub is switched off (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` set)."""
    return any(os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def needs_download(dataset: str | ConceptData) -> bool:
    """A registered hub dataset whose split is not in the local datasets cache (loading it downloads it)."""
    if not isinstance(dataset, str) or os.path.isfile(dataset) or dataset not in REGISTRY:
        return False
    hub = REGISTRY[dataset].hub
    return hub is not None and cached_split_rows(hub) is None


class _NotDownloaded(str):
    """Why a dataset was not loaded: it would have to be downloaded first (the message)."""


def _load_all(datasets: Sequence[str | ConceptData], download: bool) -> list[ConceptData | LLDDError | _NotDownloaded]:
    """Each dataset loaded once, or the error that says why it cannot be; without ``download`` a hub
    dataset that is not cached locally is not fetched (offline it is tried, to get the explained error)."""
    out: list[ConceptData | LLDDError | _NotDownloaded] = []
    for d in datasets:
        if not download and not hub_offline() and needs_download(d):
            out.append(_NotDownloaded(f"Dataset {d!r} is not in the local datasets cache: computing downloads it "
                                      "first (needs the network)."))
            continue
        try:
            out.append(load_data(d))
        except LLDDError as err:
            out.append(err)
    return out


def _model_state(service: Service, spec: ModelSpec) -> LLDDError | None:
    """Why ``spec`` cannot be resolved here, or ``None`` (a demo model to be built counts as fine)."""
    if service.needs_build(spec):
        return None
    try:
        service.info(spec)  # config and tokenizer only; memoized by the service
    except LLDDError as err:
        return err
    return None


def status_rows(
    service: Service,
    models: Sequence[str],
    datasets: Sequence[str | ConceptData],
    like: ModelSpec | None,
    settings: GainsSettings,
    download: bool,
) -> list[tuple[SweepCell, ModelSpec, ConceptData | None]]:
    """Every cell's status from the cache, with its spec and loaded data (``None`` if not loaded); the
    starting point of both engines (:func:`run_sweep`, :func:`lldd_core.sweep.ray.run_ray_sweep`)."""
    loaded = _load_all(datasets, download)
    rows: list[tuple[SweepCell, ModelSpec, ConceptData | None]] = []
    for model in models:
        spec = spec_for(model, like)
        model_error = _model_state(service, spec)
        for given, data in zip(datasets, loaded):
            name = dataset_label(given)
            if model_error is not None or isinstance(data, LLDDError):
                err = model_error if model_error is not None else data
                rows.append((SweepCell(model, name, "unavailable", str(err)), spec, None))
                continue
            if isinstance(data, _NotDownloaded):  # no result can be cached without the data
                rows.append((SweepCell(model, name, "missing", str(data)), spec, None))
                continue
            try:
                result = service.cached_gains(spec, data, settings)
            except LLDDError as err:
                rows.append((SweepCell(model, name, "unavailable", str(err)), spec, None))
                continue
            cell = (SweepCell.from_result(model, name, "cached", result) if result is not None
                    else SweepCell(model, name, "missing", _missing_note(service, spec)))
            rows.append((cell, spec, data))
    return rows


def _missing_note(service: Service, spec: ModelSpec) -> str:
    if service.needs_build(spec):
        return f"{spec.model} is not built yet: computing builds it first (a few minutes on a CPU, once)."
    return ""


def sweep_status(service: Service, models: Sequence[str], datasets: Sequence[str | ConceptData], *,
                 like: ModelSpec | None = None, settings: GainsSettings | None = None,
                 download: bool = False) -> list[SweepCell]:
    """Every cell's status from the result cache, model-major; cheap: never loads weights or builds.

    ``like`` supplies dtype, device and the safety switches of every model's spec (:func:`spec_for`);
    ``settings`` the gain settings (default: the ``gains`` command's). A model or dataset that cannot
    be resolved makes its cells ``unavailable`` with the reason; nothing raises for a single cell
    (settings no model can run with raise :class:`~lldd_core.errors.InputError`). A hub dataset that is
    not in the local datasets cache is not downloaded unless ``download``: with the hub reachable its
    cells are ``missing`` (the sweep downloads it), offline ``unavailable``.
    """
    settings = (settings if settings is not None else GainsSettings()).check()
    return [cell for cell, _, _ in status_rows(service, models, datasets, like, settings, download)]


def run_sweep(service: Service, models: Sequence[str], datasets: Sequence[str | ConceptData], *,
              like: ModelSpec | None = None, settings: GainsSettings | None = None,
              progress: SweepProgress | None = None, cell_progress: ProgressFn | None = None,
              on_cell: Callable[[SweepCell], None] | None = None) -> SweepReport:
    """Compute every missing cell with :meth:`~lldd_core.service.Service.gains`, in order, and report all.

    Cells are walked model-major (all datasets of one model, then the next model), so each model is
    loaded once. ``on_cell(cell)`` is called for every cell in that order as soon as its status is
    final: at once for ``cached`` and ``unavailable`` ones, after the computation for the others.
    ``progress(done, total, message)`` counts the cells to compute (``total``: the ``missing`` ones):
    it is called before each with the cells finished so far, and once at the end with
    ``done == total``; ``cell_progress(fraction, message)`` is the running cell's own progress (a
    demo build, the model load, the analysis).

    Each result is stored when its cell completes; an exception raised by a callback (e.g.
    ``KeyboardInterrupt``) stops the sweep and the next run resumes where it stopped. An
    :class:`~lldd_core.errors.LLDDError` in one cell makes it ``failed`` and the sweep goes on.
    """
    settings = (settings if settings is not None else GainsSettings()).check()
    start = time.perf_counter()
    rows = status_rows(service, models, datasets, like, settings, download=True)
    total = sum(cell.status == "missing" for cell, _, _ in rows)
    done = 0
    cells: list[SweepCell] = []
    for cell, spec, data in rows:
        if cell.status == "missing" and data is not None:
            what = f"{cell.model} × {cell.dataset}"
            building = service.needs_build(spec)
            if progress is not None:
                progress(done, total, f"{what}{' (building the demo model first)' if building else ''}")
            try:
                computed = service.gains(spec, data, settings, progress=cell_progress)
            except LLDDError as err:
                cell = dataclasses.replace(cell, status="failed", message=str(err))
            except OSError as err:  # a demo build on a read-only or full disk: the environment, not a bug
                if not building:
                    raise
                cell = dataclasses.replace(cell, status="failed", message=(
                    f"Could not write the demo model {spec.model} to {demo_dir()}: {err.strerror or err}. "
                    "Set LLDD_DEMO_DIR to a writable folder with some free space."))
            else:
                status: CellStatus = "cached" if computed.cache_hit else "computed"  # another session was quicker
                cell = SweepCell.from_result(cell.model, cell.dataset, status, computed.result)
            done += 1
        cells.append(cell)
        if on_cell is not None:
            on_cell(cell)
    if progress is not None:
        progress(done, total, "Done")
    return SweepReport(cells, time.perf_counter() - start)


def fill_params(cells: Sequence[SweepCell]) -> list[SweepCell]:
    """``cells`` with a missing ``n_params`` / ``n_layers`` / ``d_model`` taken from another cell of the same
    model that has a result (a model's size does not depend on the dataset)."""
    known: dict[str, SweepCell] = {}
    for c in cells:
        if c.n_params is not None:
            known.setdefault(c.model, c)
    out = []
    for c in cells:
        ref = known.get(c.model)
        if c.n_params is None and ref is not None:
            c = dataclasses.replace(c, n_params=ref.n_params, n_layers=ref.n_layers, d_model=ref.d_model)
        out.append(c)
    return out


def summary_line(cells: Sequence[SweepCell]) -> str:
    """``"6 cells: 4 cached, 1 computed, 1 failed"`` (statuses with no cell left out)."""
    counts = [(s, sum(c.status == s for c in cells)) for s in STATUSES]
    parts = ", ".join(f"{n} {s}" for s, n in counts if n)
    return f"{len(cells)} cell{'' if len(cells) == 1 else 's'}" + (f": {parts}" if parts else "")

