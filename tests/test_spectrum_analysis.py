"""Decoded spectra of one prompt and every layer's views, through the service (tiny models)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lldd_core.errors import InputError
from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.forward.views import SITES
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.store.cache import ResultCache
from tests.helpers import prompt_ids
from tests.tiny import PROMPT


@pytest.fixture()
def service(tmp_path) -> Service:
    return Service(ResultCache(tmp_path / "cache"))


def _spec(tiny_dirs, family: str, dtype: str = "float64") -> ModelSpec:
    return ModelSpec(str(tiny_dirs[family]), dtype=dtype, device="cpu")


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_spectrum_full_and_matrix_free_agree_and_match_the_foundation(service, tiny_dirs, family):
    spec = _spec(tiny_dirs, family)
    full = service.spectrum(spec, PROMPT, k=4, method="full").result
    mf = service.spectrum(spec, PROMPT, k=4, method="matrix_free").result
    assert full.method == "full" and mf.method == "matrix_free" and full.converged and mf.converged
    jac = service.jacobian(spec, PROMPT).result  # the foundation's exact singular values
    np.testing.assert_allclose(full.singular_values, jac.singular_values[:, :4], rtol=1e-10)
    np.testing.assert_allclose(mf.singular_values, jac.singular_values[:, :4], rtol=1e-6)
    np.testing.assert_allclose(full.stable_rank, jac.stable_rank, rtol=1e-10)
    ok = np.abs(mf.stable_rank - jac.stable_rank) <= 4 * mf.stable_rank_se + 1e-9
    assert ok.all(), (mf.stable_rank, jac.stable_rank, mf.stable_rank_se)
    # signs follow the reference convention: u_j . y >= 0 for every token and pair
    assert (np.einsum("tdk,d->tk", full.U, jac.y) >= -1e-12).all()
    # decodings: shapes, and the same tokens on both paths where the vectors agree
    T = len(full.tokens)
    assert len(full.u_tokens) == T and len(full.u_tokens[0]) == 4 and len(full.u_tokens[0][0]) == 8
    assert full.u_tokens[-1][0] == mf.u_tokens[-1][0] and full.v_tokens[-1][0] == mf.v_tokens[-1][0]
    assert full.u_tokens_neg[-1][0] != full.u_tokens[-1][0]
    # rows and columns only on the full path, their norms consistent with the Frobenius norm
    assert full.has_rows and not mf.has_rows
    np.testing.assert_allclose((full.row_norms**2).sum(1), (full.col_norms**2).sum(1), rtol=1e-10)
    np.testing.assert_allclose((full.row_norms**2).sum(1) / full.singular_values[:, 0] ** 2, full.stable_rank,
                               rtol=1e-10)
    assert (np.diff(full.row_norms[np.arange(T)[:, None], full.top_rows], axis=1) <= 0).all()


def test_spectrum_decodes_the_next_token_and_a_planted_row(service, tiny_dirs):
    spec = _spec(tiny_dirs, "llama")
    r = service.spectrum(spec, PROMPT, k=2, n_decode=3).result
    handle = service.handle(spec)
    W_U = handle.adapter.unembedding(handle.model).weight.detach()
    op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle))
    assert r.next_token == handle.info.tokenizer.decode([int(torch.argmax(W_U @ op.y.detach()))])
    # the decoded tokens are the argmax of the logits of u (checked independently here)
    u = torch.tensor(r.U[-1][:, 0])
    top = torch.topk(W_U @ u, 3).indices.tolist()
    assert r.u_tokens[-1][0] == [handle.info.tokenizer.decode([i]) for i in top]


def test_spectrum_is_cached_and_checks_its_input(service, tiny_dirs):
    spec = _spec(tiny_dirs, "gpt2")
    first = service.spectrum(spec, PROMPT, k=3)
    assert not first.cache_hit and service.spectrum(spec, PROMPT, k=3).cache_hit
    assert not service.spectrum(spec, PROMPT, k=3, n_decode=4).cache_hit
    assert first.result.method == "full"  # auto: d = 32 is far cheaper to form in full
    for kw, msg in [({"k": 0}, "from 1 to the hidden size"), ({"k": 10_000}, "hidden size"), ({"n_decode": 0}, "decoded"),
                    ({"method": "magic"}, "Unknown method"), ({"layer": 99}, "layer")]:
        with pytest.raises(InputError, match=msg):
            service.spectrum(spec, PROMPT, **kw)


@pytest.mark.parametrize("family", ["gpt2", "qwen3"])
def test_layers_cumulative_spectra_equal_the_foundation_layer_jacobians(service, tiny_dirs, family):
    spec = _spec(tiny_dirs, family)
    r = service.layers(spec, PROMPT, k=4).result
    assert r.sites == list(SITES) and r.lens and r.converged
    L = r.n_layers
    for layer in range(1, L + 1):
        jac = service.jacobian(spec, PROMPT, layer=layer).result  # final norm applied, as with lens
        np.testing.assert_allclose(r.singular_values[0, layer - 1], jac.singular_values[:, :4], rtol=1e-10)
        np.testing.assert_allclose(r.stable_rank[0, layer - 1], jac.stable_rank, rtol=1e-10)
    # the final layer's top direction lies in its own top-k subspace; earlier ones less or equal
    np.testing.assert_allclose(r.projection[0, L - 1], 1.0, rtol=1e-10)
    assert (r.projection <= 1 + 1e-10).all() and (r.projection >= 0).all()
    raw = service.layers(spec, PROMPT, k=4, lens=False).result
    jac_raw = service.jacobian(spec, PROMPT, layer=1, final_norm=False).result
    np.testing.assert_allclose(raw.singular_values[0, 0], jac_raw.singular_values[:, :4], rtol=1e-10)
    summary = r.summary()
    assert len(summary["layers"]) == L and set(SITES) <= summary["layers"][0].keys()


def test_layers_matrix_free_matches_full_and_sites_are_validated(service, tiny_dirs):
    spec = _spec(tiny_dirs, "llama")
    full = service.layers(spec, PROMPT, k=3, method="full", sites=("block", "mlp")).result
    mf = service.layers(spec, PROMPT, k=3, method="matrix_free", sites=("mlp", "block")).result
    streamed = service.layers(spec, PROMPT, k=3, method="streamed", sites=("block", "mlp")).result
    assert full.sites == mf.sites == streamed.sites == ["block", "mlp"] and streamed.method == "streamed"
    np.testing.assert_allclose(mf.singular_values, full.singular_values, rtol=1e-6)
    np.testing.assert_allclose(streamed.singular_values, full.singular_values, rtol=1e-4)  # tol 1e-2: ~its square
    assert service.layers(spec, PROMPT, k=3, method="full", sites=("mlp", "block")).cache_hit
    with pytest.raises(InputError, match="site"):
        service.layers(spec, PROMPT, sites=("nowhere",))


@pytest.mark.parametrize("method", ["full", "matrix_free", "streamed"])
def test_spectrum_of_chosen_positions_equals_those_rows_of_all(service, tiny_dirs, method):
    spec = _spec(tiny_dirs, "llama")
    every = service.spectrum(spec, PROMPT, k=4, method=method).result
    T = len(every.tokens)
    some = service.spectrum(spec, PROMPT, k=4, method=method, positions=(-1, 0, 2, 2)).result
    assert some.positions == [0, 2, T - 1] and some.rows == [0, 2, T - 1] and every.rows == list(range(T))
    np.testing.assert_allclose(some.singular_values, every.singular_values[[0, 2, T - 1]],
                               rtol=1e-4 if method == "streamed" else 1e-6)  # another basis: within the tolerance
    assert [e["position"] for e in some.summary_extra()["per_token"]] == [0, 2, T - 1]
    # the tables read a subset's rows by token position, and refuse a position that was not computed
    from lldd_core.plots.spectra import spectrum_table, token_spectrum_table

    assert list(token_spectrum_table(some)["position"]) == [0, 2, T - 1]
    assert spectrum_table(some, -1)["σ_j"].tolist() == list(some.singular_values[2])
    with pytest.raises(ValueError, match="was not computed"):
        spectrum_table(some, 1)
    assert service.spectrum(spec, PROMPT, k=4, method=method, positions=tuple(range(T))).cache_hit  # all = no subset
    with pytest.raises(InputError, match="do not index"):
        service.spectrum(spec, PROMPT, k=4, positions=(T,))
