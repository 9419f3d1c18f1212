"""The service: cached per model revision, dtype and prompt; serialized per model; clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lldd_core.errors import InputError
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.store.cache import ResultCache
from tests.tiny import PROMPT


@pytest.fixture()
def service(tmp_path) -> Service:
    return Service(ResultCache(tmp_path / "cache"))


def test_second_call_is_a_hit_with_equal_arrays(service, tiny_dirs):
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    steps: list[tuple[float, str]] = []
    first = service.jacobian(spec, PROMPT, progress=lambda f, m: steps.append((f, m)))
    assert not first.cache_hit and steps[-1][0] == 1.0
    assert first.result.reconstruction_error < 1e-10
    second = service.jacobian(spec, PROMPT)
    assert second.cache_hit
    np.testing.assert_array_equal(first.result.singular_values, second.result.singular_values)
    np.testing.assert_array_equal(first.result.reconstruction, second.result.reconstruction)


def test_cache_hit_needs_no_weights(service, tiny_dirs):
    spec = ModelSpec(str(tiny_dirs["gpt2"]), device="cpu")
    service.jacobian(spec, PROMPT)
    service.unload()
    assert service.jacobian(spec, PROMPT).cache_hit
    assert service.resident is None


def test_other_dtype_prompt_layer_or_weights_miss(service, tiny_dirs, tmp_path):
    spec = ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    service.jacobian(spec, PROMPT)
    assert not service.jacobian(ModelSpec(spec.model, dtype="float32", device="cpu"), PROMPT).cache_hit
    assert not service.jacobian(spec, PROMPT + " more").cache_hit
    assert not service.jacobian(spec, PROMPT, layer=1).cache_hit
    assert service.jacobian(spec, PROMPT, layer=1).cache_hit


def test_corrupted_entry_is_recomputed(service, tiny_dirs):
    spec = ModelSpec(str(tiny_dirs["gpt2"]), device="cpu")
    first = service.jacobian(spec, PROMPT)
    for key in list(service.cache.keys()):
        if key.startswith("jacobian:"):
            service.cache._dc.set(key, b"LLDD1\x00\x00")
    again = service.jacobian(spec, PROMPT)
    assert not again.cache_hit
    np.testing.assert_allclose(again.result.y, first.result.y)
    assert service.jacobian(spec, PROMPT).cache_hit


def test_layer_out_of_range(service, tiny_dirs):
    spec = ModelSpec(str(tiny_dirs["gpt2"]), device="cpu")
    with pytest.raises(InputError, match="from 1 to the number of layers 2"):
        service.jacobian(spec, PROMPT, layer=3)


def test_concurrent_sessions_get_consistent_results(service, tiny_dirs):
    """Two models requested from two threads at once: each result equals its sequential value."""
    specs = [ModelSpec(str(tiny_dirs[f]), dtype="float64", device="cpu") for f in ("gpt2", "qwen2")]
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = service.jacobian(specs[i % 2], PROMPT, layer=1 + i // 2).result
        except BaseException as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    fresh = Service(ResultCache(service.cache.directory.parent / "fresh"))
    for i, result in results.items():
        expected = fresh.jacobian(specs[i % 2], PROMPT, layer=1 + i // 2).result
        np.testing.assert_allclose(result.y, expected.y, rtol=1e-12)
        assert result.reconstruction_error < 1e-10


def test_out_of_memory_is_a_clear_error_and_cache_survives(service, tiny_dirs, monkeypatch):
    import torch

    from lldd_core import service as service_module
    from lldd_core.errors import ResourceError

    spec = ModelSpec(str(tiny_dirs["gpt2"]), device="cpu")
    service.jacobian(spec, PROMPT)
    entries = service.cache.info()["entries"]

    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(service_module, "analyze_jacobian", boom)
    with pytest.raises(ResourceError, match="Out of memory"):
        service.jacobian(spec, "another prompt")
    assert service.cache.info()["entries"] == entries
    assert service.jacobian(spec, PROMPT).cache_hit


def test_an_oversized_jacobian_is_streamed_and_only_the_full_method_refused(service, tiny_dirs, monkeypatch):
    from lldd_core.errors import ResourceError

    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", "0.000001")
    spec = ModelSpec(str(tiny_dirs["gpt2"]), device="cpu")
    r = service.jacobian(spec, PROMPT).result  # past the limit: row blocks, never the whole J
    assert r.streamed and r.reconstruction_error < 1e-5
    with pytest.raises(ResourceError, match="use the streamed method, or shorten the prompt"):
        service.spectrum(spec, PROMPT, method="full")
    assert service.spectrum(spec, PROMPT, k=2).result.method == "streamed"  # auto


def test_half_precision_overflow_is_a_numerical_error(service, tmp_path):
    """Weights that overflow float16 give NaN/Inf: reported as such, nothing cached."""
    import torch

    from lldd_core.errors import NumericalError
    from tests.tiny import build_model, build_tokenizer

    model = build_model("llama")
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(300.0)
    model.save_pretrained(tmp_path / "hot")
    build_tokenizer().save_pretrained(tmp_path / "hot")
    with pytest.raises(NumericalError, match="float32 or bfloat16"):
        service.jacobian(ModelSpec(str(tmp_path / "hot"), dtype="float16", device="cpu"), PROMPT)
    assert service.cache.info()["by_kind"].get("jacobian", 0) == 0


def test_gains_lookup_and_ablation_are_cached_without_weights(service, tiny_dirs):
    # float64: the ablation evaluates its ε values in one batch, the single analysis one ε, so in float32 the
    # two agree only to rounding (6e-6 relative, divided by ε); in float64 they are the same numbers
    spec = ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
    settings = dict(order=4, n_eval=2, sizes=(6, 4, 3))
    assert service.cached_gains(spec, "sentiment", **settings) is None
    computed = service.gains(spec, "sentiment", **settings)
    service.unload()
    found = service.cached_gains(spec, "sentiment", **settings)
    assert found is not None and service.resident is None  # a lookup never loads weights
    np.testing.assert_array_equal(found.measured, computed.result.measured)
    assert service.cached_gains(spec, "sentiment", **{**settings, "eps": 0.2}) is None

    first = service.gains_ablation(spec, "sentiment", "eps", [0.05, 0.1], **settings)
    assert not first.cache_hit and first.result.values == [0.05, 0.1]
    service.unload()
    again = service.gains_ablation(spec, "sentiment", "eps", [0.1, 0.05], **settings)  # same set: one entry
    assert again.cache_hit and service.resident is None
    # the ablation's eps = 0.1 row is the single analysis at eps = 0.1
    np.testing.assert_allclose(again.result.measured[1], computed.result.measured, rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="Orders"):
        service.gains_ablation(spec, "sentiment", "order", [10_000], **settings)
