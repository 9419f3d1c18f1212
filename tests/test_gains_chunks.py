"""A gain analysis cut into a basis and prompt chunks gives the one-process result."""

from __future__ import annotations

import numpy as np
import pytest

from lldd_core.analysis.gains import analyze_gains
from lldd_core.analysis.gains_chunks import assemble, chunk_ranges, gains_basis, gains_chunk
from lldd_core.concepts.catalog import load
from lldd_core.store.results import from_bytes, to_bytes
from tests.helpers import load as load_model

SMALL = (6, 4, 5)
FIELDS = ("predicted", "measured", "exact", "directions", "spearman", "pearson")


@pytest.mark.parametrize(("family", "mode"), [("gpt2", "prompt"), ("llama", "population")])
def test_chunks_assemble_to_the_single_analysis(tiny_dirs, family, mode):
    handle = load_model(tiny_dirs[family])
    data = load("sentiment")
    kwargs = {"order": 6, "complement": "krylov", "n_eval": 5, "mode": mode, "sizes": SMALL, "seed": 3}
    whole = analyze_gains(handle, data, eps=0.05, **kwargs)
    basis = from_bytes(to_bytes(gains_basis(handle, data, **kwargs)))  # as the driver's cache returns it
    assert basis.n_prompts == 5
    for size in (2, 5):
        chunks = [from_bytes(to_bytes(gains_chunk(handle, data, basis, a, b, 0.05)))
                  for a, b in chunk_ranges(basis.n_prompts, size)]
        got = assemble(basis, chunks[::-1], 0.05)  # arrival order does not matter
        for name in FIELDS:
            np.testing.assert_allclose(getattr(got, name), getattr(whole, name), rtol=1e-9, atol=1e-12,
                                       err_msg=name, equal_nan=True)
        for name in ("prompts", "layers", "split_sizes", "n_params", "order", "eps", "mode", "dataset",
                     "best_layer_predicted", "best_layer_measured", "best_layer_exact"):
            assert getattr(got, name) == getattr(whole, name), name


def test_chunks_must_cover_every_prompt_once(tiny_dirs):
    handle = load_model(tiny_dirs["gpt2"])
    data = load("sentiment")
    basis = gains_basis(handle, data, order=4, n_eval=4, sizes=(6, 4, 4))
    a = gains_chunk(handle, data, basis, 0, 2, 0.1)
    with pytest.raises(ValueError, match="cover"):
        assemble(basis, [a], 0.1)
    with pytest.raises(ValueError, match="cover"):
        assemble(basis, [a, a], 0.1)
    with pytest.raises(ValueError, match="outside"):
        gains_chunk(handle, data, basis, 2, 9, 0.1)
    assert chunk_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
