"""The Krylov basis is built stably: float32 predicted gains agree with float64 to 1e-4 of the curve's maximum.

Raw powers ``v, Mv, ..., M^31 v`` (orthogonalized afterwards) lost the span in float32: on the random
Llama below the deviation was 9e-2 of the curve's maximum at layer 0; Arnoldi gives ~5e-7.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from lldd_core.analysis.gains import prepare_gains
from lldd_core.concepts.catalog import load as load_dataset
from lldd_core.linalg.llv import arnoldi
from lldd_core.models.loading import ModelSpec, load_model
from tests.tiny import build_tokenizer

BOUND = 1e-4  # of max |predicted| (float64)


@pytest.fixture(scope="module")
def random_llama(tmp_path_factory) -> Path:
    """Wide enough (d = 128, 6 layers) that an order-32 raw-power basis is ill-conditioned."""
    path = tmp_path_factory.mktemp("llama128")
    cfg = LlamaConfig(vocab_size=320, hidden_size=128, intermediate_size=344, num_hidden_layers=6,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, initializer_range=0.05)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).save_pretrained(path)
    build_tokenizer().save_pretrained(path)
    return path


def _predicted(path: Path, dtype: str, order: int, n_eval: int, sizes: tuple[int, int, int]) -> np.ndarray:
    """Prompt-mode predicted gains ``[P, K]`` (the measured curves are not needed here)."""
    handle = load_model(ModelSpec(str(path), dtype=dtype, device="cpu"))
    setup = prepare_gains(handle, load_dataset("sentiment"), n_eval=n_eval, sizes=sizes)
    return setup.predicted(setup.bases("krylov", order), "prompt")


def _deviation(path: Path, **settings) -> float:
    p32, p64 = _predicted(path, "float32", **settings), _predicted(path, "float64", **settings)
    return float(np.abs(p32 - p64).max() / np.abs(p64).max())


def test_float32_matches_float64_on_a_random_llama(random_llama):
    assert _deviation(random_llama, order=32, n_eval=2, sizes=(20, 4, 2)) < BOUND


def test_float32_matches_float64_on_the_demo_model(demo_default):
    assert _deviation(demo_default, order=32, n_eval=4, sizes=(40, 16, 4)) < BOUND


def test_arnoldi_spans_the_krylov_space_and_reuses_its_products():
    gen = torch.Generator().manual_seed(0)
    M = torch.randn(40, 40, generator=gen, dtype=torch.float64) / 40**0.5
    v = torch.nn.functional.normalize(torch.randn(40, generator=gen, dtype=torch.float64), dim=0)
    Q, MQ = arnoldi(v, lambda V: M @ V, 8)
    torch.testing.assert_close(Q.T @ Q, torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-13)
    torch.testing.assert_close(Q[:, 0], v, rtol=0, atol=1e-15)
    torch.testing.assert_close(MQ, M @ Q[:, :7], rtol=0, atol=1e-13)
    powers = torch.stack([torch.linalg.matrix_power(M, j) @ v for j in range(8)], dim=1)
    residual = powers - Q @ (Q.T @ powers)  # every power lies in span(Q)
    assert float(residual.norm() / powers.norm()) < 1e-12


def test_arnoldi_completes_an_invariant_subspace():
    M = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], dtype=torch.float64))
    v = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64) / 2**0.5  # invariant: span{e1, e2}
    Q, MQ = arnoldi(v, lambda V: M @ V, 5)
    assert Q.shape == (6, 5)
    torch.testing.assert_close(Q.T @ Q, torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-13)
    assert MQ.shape[1] == 2  # two products: the second found the space invariant
