"""Streamed spectra (:mod:`lldd_core.linalg.streamed`): the same triplets, rows, columns and Frobenius norms as
the formed Jacobian, and memory that a long prompt's ``T * d * d`` Jacobian would exceed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.linalg.dense import DenseOperator
from lldd_core.linalg.spectral import top_singular
from lldd_core.linalg.streamed import Extremes, block_rows, topk_svd_streamed
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.store.cache import ResultCache
from tests.helpers import load, prompt_ids
from tests.tiny import PROMPT

ROOT = Path(__file__).resolve().parents[1]


def _power_law(T: int, d: int, decay: float, seed: int = 0) -> torch.Tensor:
    """``T`` matrices ``d x d`` with random singular vectors and singular values ``(j + 1)^-decay``."""
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(T, d, d, generator=gen, dtype=torch.float64))[0]
    V = torch.linalg.qr(torch.randn(T, d, d, generator=gen, dtype=torch.float64))[0]
    s = (torch.arange(d, dtype=torch.float64) + 1) ** -decay
    return U * s @ V.mT


def _true_residual(J: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    fwd = torch.linalg.vector_norm(J @ V - U * S[:, None, :], dim=1)
    back = torch.linalg.vector_norm(J.mT @ U - V * S[:, None, :], dim=1)
    return torch.maximum(fwd, back) / S[:, :1]


def _assert_extremes(e: Extremes, J: torch.Tensor) -> None:
    exact = Extremes.of(J, e.top_rows.shape[1])
    for name in ("row_norms", "col_norms", "row_vectors", "col_vectors"):
        torch.testing.assert_close(getattr(e, name), getattr(exact, name), rtol=1e-12, atol=1e-14)
    assert torch.equal(e.top_rows, exact.top_rows) and torch.equal(e.top_cols, exact.top_cols)


@pytest.mark.parametrize("decay", [0.5, 1.0])
def test_streamed_matches_the_exact_svd_of_power_law_matrices(decay):
    J = _power_law(5, 160, decay)
    tol = 1e-3
    out = topk_svd_streamed(DenseOperator(J), 8, tol=tol, oversample=4, rows=23)  # blocks that do not divide d
    svd = out.svd
    assert svd.converged and svd.method == "streamed" and 2 <= out.passes <= 6
    assert svd.n_products == out.passes * 160  # one product per row per pass, whatever T
    exact = torch.linalg.svdvals(J)[:, :8]
    # Ritz values from below, accurate to about residual^2 / gap: far inside tol
    assert ((svd.S - exact) / exact).abs().max() < tol
    assert (svd.S <= exact * (1 + 1e-12)).all()
    # the reported residual is the true one (forward part exact, backward part from the accumulated J^T J K)
    torch.testing.assert_close(svd.residual, _true_residual(J, svd.U, svd.S, svd.V), rtol=1e-6, atol=1e-12)
    assert (svd.residual <= tol).all()
    torch.testing.assert_close(svd.frobenius_sq, J.pow(2).sum((1, 2)), rtol=1e-12, atol=0)
    assert (svd.frobenius_se == 0).all()
    _assert_extremes(out.extremes, J)


def test_streamed_stops_at_max_passes_and_reports_it():
    J = torch.randn(3, 120, 120, generator=torch.Generator().manual_seed(1), dtype=torch.float64)  # flat spectrum
    out = topk_svd_streamed(DenseOperator(J), 6, tol=1e-12, max_passes=2, rows=40)
    assert out.passes == 2 and not out.svd.converged
    torch.testing.assert_close(out.svd.residual, _true_residual(J, out.svd.U, out.svd.S, out.svd.V),
                               rtol=1e-6, atol=1e-12)
    single = topk_svd_streamed(DenseOperator(J), 6, max_passes=1, n_extremes=0)
    assert single.passes == 1 and single.extremes.col_vectors.shape[1] == 0
    with pytest.raises(ValueError, match="k="):
        topk_svd_streamed(DenseOperator(J), 0)


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_streamed_on_model_operators_equals_the_formed_jacobian(tiny_dirs, family):
    handle = load(tiny_dirs[family])
    op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle))
    full = op.full()
    # l = 3 of d = 32: a sketch of 12 directions, so the passes do real work
    out = topk_svd_streamed(op, 2, tol=1e-8, oversample=1, rows=5, max_passes=12)
    assert out.svd.converged and out.passes >= 2  # random-init spectra are flat: 7-9 passes here
    torch.testing.assert_close(out.svd.S, torch.linalg.svdvals(full.J)[:, :2], rtol=1e-9, atol=0)
    torch.testing.assert_close(out.bias, full.b, rtol=1e-12, atol=1e-13)  # b = dy/ds from the same VJPs
    _assert_extremes(out.extremes, full.J)
    torch.testing.assert_close(out.svd.residual, _true_residual(full.J, out.svd.U, out.svd.S, out.svd.V),
                               rtol=1e-3, atol=1e-13)


def test_streamed_serves_a_subset_of_positions(tiny_dirs):
    handle = load(tiny_dirs["llama"])
    op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle))
    positions = [0, 2, op.n_tokens - 1]
    out = topk_svd_streamed(op.at(positions), 2, tol=1e-8, oversample=1, max_passes=12)
    J = op.full().J[positions]
    torch.testing.assert_close(out.svd.S, torch.linalg.svdvals(J)[:, :2], rtol=1e-9, atol=0)
    _assert_extremes(out.extremes, J)
    assert top_singular(op.at(positions), 2, method="streamed", oversample=1).method == "streamed"


def test_streamed_float32_agrees_with_float64(tiny_dirs):
    vals = {}
    for dtype in ("float64", "float32"):
        handle = load(tiny_dirs["gpt2"], dtype=dtype)
        op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle))
        vals[dtype] = topk_svd_streamed(op, 3, tol=1e-5, oversample=1, max_passes=12).svd.S.double()
    # float32 Jacobians carry ~1e-7 relative rounding; the spectra agree to the residual bound
    torch.testing.assert_close(vals["float32"], vals["float64"], rtol=2e-5, atol=0)


def test_block_rows_bounds_the_block_and_the_vjp(tiny_dirs):
    handle = load(tiny_dirs["gpt2"])
    op = jacobian_operator(handle.model, handle.adapter, prompt_ids(handle))
    assert block_rows(op) == op.d_out  # a tiny prompt: one block
    per_row = op.n_tokens * op.d_in * 8
    assert block_rows(op, budget=3 * per_row) == 3
    assert block_rows(op, budget=1) == 1


def test_spectrum_analysis_streamed_equals_full(tmp_path, tiny_dirs):
    service = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    full = service.spectrum(spec, PROMPT, k=3, method="full").result
    streamed = service.spectrum(spec, PROMPT, k=3, method="streamed").result
    assert streamed.method == "streamed" and streamed.converged and streamed.passes >= 2 and full.passes == 0
    # at the analyses' tolerance (residual 1e-2) the Ritz values are accurate to about its square
    np.testing.assert_allclose(streamed.singular_values, full.singular_values, rtol=1e-4)
    # what the full path reads off the formed matrices is exact here too
    assert streamed.has_rows
    frobenius = streamed.stable_rank * streamed.singular_values[:, 0] ** 2  # exact; s_1 is the Ritz value
    np.testing.assert_allclose(frobenius, full.stable_rank * full.singular_values[:, 0] ** 2, rtol=1e-10)
    assert (streamed.stable_rank_se == 0).all()
    np.testing.assert_allclose(streamed.row_norms, full.row_norms, rtol=1e-10)
    np.testing.assert_allclose(streamed.col_norms, full.col_norms, rtol=1e-10)
    assert (streamed.top_rows == full.top_rows).all() and (streamed.top_cols == full.top_cols).all()
    assert streamed.row_tokens == full.row_tokens and streamed.col_tokens == full.col_tokens
    assert streamed.u_tokens[-1][0] == full.u_tokens[-1][0] and streamed.v_tokens[-1][0] == full.v_tokens[-1][0]
    again = service.spectrum(spec, PROMPT, k=3, method="streamed")
    assert again.cache_hit and again.result.passes == streamed.passes  # the new field survives the cache


def test_auto_streams_when_the_full_jacobian_does_not_fit(tmp_path, tiny_dirs, monkeypatch):
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "0.0001")  # 107 kB: this prompt's J (T * 32^2 * 8 bytes) is bigger
    service = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    long_prompt = " ".join([PROMPT] * 4)
    r = service.spectrum(spec, long_prompt, k=2).result
    assert len(r.tokens) * 32 * 32 * 8 > 0.0001 * 2**30
    assert r.method == "streamed" and r.converged and r.has_rows


#: The memory checks run in a fresh interpreter (a pytest worker's allocator holds what earlier tests freed), with
#: a fixed mmap threshold: glibc's dynamic one keeps freed blocks resident and would count them, a fixed one
#: measures what is alive. Each prints the peak resident memory above its start (VmHWM reset by clear_refs).
PEAK = """
def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key))

base = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")
"""

#: A long prompt through a real (random, one-block) Llama: the graph of the forward, VJPs, passes.
MODEL_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from lldd_core.forward.jacobian import jacobian_operator
from lldd_core.linalg.streamed import topk_svd_streamed
from lldd_core.models.arch import adapter_for

T, d = int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = LlamaConfig(hidden_size=d, intermediate_size=64, num_hidden_layers=1, num_attention_heads=1,
                  num_key_value_heads=1, vocab_size=64, max_position_embeddings=T)
model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 64, (T,))
""" + PEAK + """
op = jacobian_operator(model, adapter_for("llama"), ids)
out = topk_svd_streamed(op, 1, oversample=1, max_passes=2, rows=2)
print(json.dumps({"peak_mib": (kib("VmHWM") - base) / 1024, "ok": bool(torch.isfinite(out.svd.S).all())}))
"""

#: The streaming itself at a width where T * d * d is gigabytes: ``J_i = A_i B`` (rank q) behind the operator
#: interface, whose VJPs cost ``T q d`` and hold nothing of size ``T d d``.
LOW_RANK_SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
from lldd_core.linalg.streamed import topk_svd_streamed

T, d, q = int(sys.argv[2]), int(sys.argv[3]), 16
gen = torch.Generator().manual_seed(0)
A = torch.randn(T, d, q, generator=gen) / d**0.5
B = torch.randn(q, d, generator=gen)

class LowRank:
    n_tokens, d_out, d_in = T, d, d
    y = torch.zeros(d)

    def rmatvec(self, u):  # J_i^T u = B^T A_i^T u for every token: [c, T, d]
        return torch.einsum("co,toq,qd->ctd", u, A, B), torch.zeros(u.shape[0])
""" + PEAK + """
out = topk_svd_streamed(LowRank(), 2, oversample=2, rows=32, max_passes=2)  # pass 2 holds the widest basis
peak = (kib("VmHWM") - base) / 1024
bound = torch.linalg.svdvals(A[:8])[:, 0] * torch.linalg.svdvals(B)[0]  # s_1(A_i B) <= s_1(A_i) s_1(B)
ok = out.passes == 2 and bool((out.svd.S[:8, 0] <= bound * (1 + 1e-5)).all())
print(json.dumps({"peak_mib": peak, "ok": ok}))
"""


def _peak(script: str, *args: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "131072"}
    run = subprocess.run([sys.executable, "-c", script, str(ROOT), *map(str, args)], env=env,
                         capture_output=True, text=True, timeout=300, check=True)
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["ok"]
    return out["peak_mib"]


LINUX_PEAK = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")


@LINUX_PEAK
def test_a_long_prompt_spectrum_stays_under_a_bound_its_full_jacobian_exceeds():
    T, d = 384, 256
    jacobian_mib = T * d * d * 4 / 2**20  # 96 MiB: the float32 entries any formed path holds
    peak = _peak(MODEL_SCRIPT, T, d)  # measured 51 MiB: the graph (15), the passes' T x d x m arrays and one VJP
    assert peak < 0.75 * jacobian_mib, (peak, jacobian_mib)


@LINUX_PEAK
def test_streaming_memory_is_independent_of_t_d_d():
    T, d = 256, 768
    jacobian_mib = T * d * d * 4 / 2**20  # 576 MiB
    peak = _peak(LOW_RANK_SCRIPT, T, d)  # measured 168 MiB: one 24 MiB row block and the passes' T x d x 24 arrays
    assert peak < 250 < jacobian_mib / 2, (peak, jacobian_mib)


def test_the_jacobian_analysis_streams_a_prompt_past_the_limit(tmp_path, tiny_dirs, monkeypatch):
    service = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    full = service.jacobian(spec, PROMPT).result
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "1e-5")  # 10 kB: this prompt's J does not fit
    assert service.jacobian(spec, PROMPT).cache_hit  # a full result already computed serves any limit
    streamed = Service(ResultCache(tmp_path / "other")).jacobian(spec, PROMPT).result
    assert streamed.streamed and not full.streamed and streamed.singular_values.shape == (len(full.tokens), 16)
    assert streamed.reconstruction_error < 1e-12  # exact without ever holding J
    for name in ("reconstruction", "plain_reconstruction", "bias", "token_contributions", "y"):
        np.testing.assert_allclose(getattr(streamed, name), getattr(full, name), rtol=1e-10, atol=1e-12)
    assert streamed.plain_reconstruction_error == pytest.approx(full.plain_reconstruction_error, rel=1e-8)
    np.testing.assert_allclose(streamed.singular_values, full.singular_values[:, :16], rtol=1e-4)
    frobenius = streamed.stable_rank * streamed.singular_values[:, 0] ** 2  # exact; s_1 the Ritz value
    np.testing.assert_allclose(frobenius, full.stable_rank * full.singular_values[:, 0] ** 2, rtol=1e-10)


def test_progress_only_moves_forward_over_the_passes():
    J = torch.randn(3, 120, 120, generator=torch.Generator().manual_seed(2), dtype=torch.float64)  # flat spectrum
    seen: list[tuple[float, str]] = []
    out = topk_svd_streamed(DenseOperator(J), 2, tol=1e-12, oversample=1, max_passes=4, rows=50,
                            progress=lambda frac, msg: seen.append((frac, msg)))
    fractions = [f for f, _ in seen]
    assert out.passes == 4 and fractions == sorted(fractions) and 0 < fractions[0] and fractions[-1] < 1
    assert seen[0][1] == "pass 1: rows 50/120" and seen[-1][1] == "pass 4: rows 120/120"
