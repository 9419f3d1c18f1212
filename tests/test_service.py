"""The service: cached per model revision, dtype and prompt; serialized per model; clear errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lldd_core.cache import ResultCache
from lldd_core.errors import InputError
from lldd_core.models import ModelSpec
from lldd_core.service import Service
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
    with pytest.raises(InputError, match="between 1 and 2"):
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
