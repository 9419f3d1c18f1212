"""One gain analysis split into a shared basis and chunks of evaluation prompts (distributed sweeps).

:func:`~lldd_core.analysis.gains.analyze_gains` does everything in one process. For a sweep on a cluster
(:mod:`lldd_core.sweep.ray`) the same computation is cut where it parallelizes:

1. :func:`gains_basis` (one task per cell): splits, the concept directions ``v_l`` and class-mean
   differences, the bases ``P_0..P_L`` (and in population mode the mean model's curve). Returned
   as a :class:`GainsBasis` (arrays, no tensors), so the driver can cache it and ship it.
2. :func:`gains_chunk` (one task per chunk of evaluation prompts): the predicted, measured and
   exact curves of prompts ``start..stop-1`` on that basis. Each prompt's curves depend on that
   prompt and the basis only, so chunks are independent and any split gives the same rows.
3. :func:`assemble` (the driver): the chunks in order -> the :class:`~lldd_core.analysis.gains.GainsResult`
   that ``analyze_gains`` returns for the same settings (equal up to batching round-off, ~1e-15 in
   float64), stored under the same cache key.

Every array crosses process boundaries as float64; the model dtype's values survive the round trip
exactly (float32 and bfloat16 embed in float64).
"""

from __future__ import annotations

import itertools
import time
from typing import Any

import numpy as np
import torch

from ..concepts.data import ConceptData
from ..concepts.splits import split
from ..models.loading import ModelHandle
from ..models.placement import model_dtype
from ..progress import ProgressFn
from ..store.results import Result, result_type
from .gains import GainsResult, GainsSetup, check_finite, common_fields, gains_result, prepare_gains
from .settings import GainsSettings

BASIS = "gains-basis"
CHUNK = "gains-chunk"


@result_type
class GainsBasis(Result):
    """What every chunk of one cell shares (see module doc); ``common`` fields as in ``GainsResult``."""

    common: dict  # the DirectionStamp fields of the cell (gains.common_fields), by name
    order: int
    complement: str
    mode: str
    sizes: list
    seed: int
    n_prompts: int
    elapsed_s: float
    directions: np.ndarray  # [L + 1, d] unit v_l
    differences: np.ndarray  # [L + 1, d] class-mean differences E_l
    bases: np.ndarray  # [L + 1, d, r] (empty in population mode)
    population: np.ndarray  # [K] the mean model's predicted curve (empty in prompt mode)


@result_type
class GainsChunk(Result):
    """The curves of evaluation prompts ``start..stop-1`` (rows of the cell's ``GainsResult``)."""

    start: int
    stop: int
    elapsed_s: float
    predicted: np.ndarray  # [stop - start, K]
    measured: np.ndarray
    exact: np.ndarray


def chunk_ranges(n_prompts: int, size: int) -> list[tuple[int, int]]:
    """``[(0, size), (size, 2 size), ...]`` covering ``n_prompts`` prompts."""
    if size < 1:
        raise ValueError("chunk size must be at least 1")
    return [(a, min(a + size, n_prompts)) for a in range(0, n_prompts, size)]


def gains_basis(
    handle: ModelHandle,
    data: ConceptData,
    settings: GainsSettings | None = None,
    *,
    progress: ProgressFn | None = None,
    **overrides: Any,
) -> GainsBasis:
    """Phase 1: splits, directions and bases of one cell (the part every chunk shares); ``settings.eps`` is
    the chunks' business (:func:`gains_chunk`)."""
    s = GainsSettings.resolve(settings, overrides).check(handle.info.d_model)
    order, complement, mode, sizes, seed = s.order, s.complement, s.mode, s.sizes, s.seed
    t0 = time.perf_counter()
    setup = prepare_gains(handle, data, s, progress=progress)
    bases = setup.bases(complement, order, seed)
    population = setup.population_curve(bases) if mode == "population" else np.zeros(0)
    stacked = torch.stack(bases).detach().double().cpu().numpy() if mode == "prompt" else np.zeros((0, 0, 0))
    return GainsBasis(
        common=common_fields(setup), order=int(order), complement=complement, mode=mode,
        sizes=[int(n) for n in sizes], seed=int(seed), n_prompts=len(setup.evaluation),
        elapsed_s=time.perf_counter() - t0, directions=setup.directions.detach().double().cpu().numpy(),
        differences=setup.differences.detach().double().cpu().numpy(), bases=stacked, population=population,
    )


def setup_from_basis(handle: ModelHandle, data: ConceptData, basis: GainsBasis) -> GainsSetup:
    """The :class:`~lldd_core.analysis.gains.GainsSetup` of ``basis`` without the concept states' forward passes
    (the splits are recomputed: they depend on the data and seed only)."""
    n_concept, n_operating, n_eval = basis.sizes
    splits = split(data, n_concept=n_concept, n_operating=n_operating, n_eval=n_eval, seed=basis.seed)
    tok, encode = handle.info.tokenizer, handle.info.encode
    texts = list(basis.common["prompts"])
    if list(splits.evaluation.texts[: len(texts)]) != texts:
        raise ValueError("the data does not match the basis (different evaluation prompts)")
    dtype, device = model_dtype(handle.model), handle.device
    return GainsSetup(
        handle, data, splits, torch.as_tensor(basis.directions).to(dtype=dtype, device=device),
        list(basis.common["layers"]), [encode(t) for t in splits.operating.texts], [encode(t) for t in texts], texts,
        tok.pad_token_id if tok.pad_token_id is not None else 0,
        differences=torch.as_tensor(basis.differences).to(dtype=dtype, device=device),
        direction_norms=np.asarray(basis.common["direction_norms"]),
        direction_noise=np.asarray(basis.common["direction_noise"]),
        direction_strength=np.asarray(basis.common["direction_strength"]),
        flagged_layers=list(basis.common["flagged_layers"]),
    )


def gains_chunk(handle: ModelHandle, data: ConceptData, basis: GainsBasis, start: int, stop: int, eps: float,
                progress: ProgressFn | None = None) -> GainsChunk:
    """Phase 2: predicted, measured and exact curves of evaluation prompts ``start..stop-1``."""
    if not 0 <= start < stop <= basis.n_prompts:
        raise ValueError(f"chunk {start}..{stop} outside 0..{basis.n_prompts}")
    t0 = time.perf_counter()
    setup = setup_from_basis(handle, data, basis)
    rows = slice(start, stop)
    if basis.mode == "population":
        P = np.repeat(basis.population[None], stop - start, axis=0)
    else:
        dtype, device = model_dtype(handle.model), handle.device
        bases = [torch.as_tensor(b).to(dtype=dtype, device=device) for b in basis.bases]
        P = setup.prompt_predictions(bases, setup.evaluation[rows])
    M, E = setup.curves([eps], progress, rows=rows)
    check_finite(handle, P, M[0])
    return GainsChunk(start=int(start), stop=int(stop), elapsed_s=time.perf_counter() - t0,
                      predicted=P, measured=M[0], exact=E)


def assemble(basis: GainsBasis, chunks: list[GainsChunk], eps: float) -> GainsResult:
    """Phase 3: the chunks (any order, covering ``0..n_prompts`` exactly once) -> the cell's result."""
    chunks = sorted(chunks, key=lambda c: c.start)
    covered = [(c.start, c.stop) for c in chunks]
    if not chunks or covered[0][0] != 0 or covered[-1][1] != basis.n_prompts or any(
            a[1] != b[0] for a, b in itertools.pairwise(covered)):
        raise ValueError(f"chunks {covered} do not cover prompts 0..{basis.n_prompts} exactly once")
    cat = {name: np.concatenate([getattr(c, name) for c in chunks]) for name in ("predicted", "measured", "exact")}
    return gains_result(dict(basis.common), order=basis.order, complement=basis.complement, eps=eps, mode=basis.mode,
                        directions=basis.directions, elapsed_s=basis.elapsed_s + sum(c.elapsed_s for c in chunks),
                        **cat)
