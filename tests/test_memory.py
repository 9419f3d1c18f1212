"""Memory estimates before loading: exact weight and KV-cache sizes, warnings when the device is too small."""

from __future__ import annotations

import json

import pytest
import torch

from lldd_core.cli.main import main
from lldd_core.models import memory
from lldd_core.models.loading import ModelSpec, load_model, resolve_model
from lldd_core.models.memory import MemoryEstimate, estimate_memory, format_bytes, weight_bytes
from lldd_core.service import Service


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3", "gemma2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_weights_and_kv_cache_match_the_loaded_model(tiny_dirs, family, dtype):
    spec = ModelSpec(str(tiny_dirs[family]), dtype=dtype, device="cpu")
    estimate = estimate_memory(resolve_model(spec), tokens=7)
    handle = load_model(spec)
    params = list(handle.model.parameters())
    assert estimate.n_params == sum(p.numel() for p in params)
    assert estimate.weights == sum(p.numel() * p.element_size() for p in params)
    ids = torch.tensor([handle.info.encode("The Golden Gate Bridge is")[:7]])
    with torch.no_grad():
        cache = handle.model(input_ids=ids, use_cache=True).past_key_values
    kv = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    if family == "gemma2":  # sliding-window layers keep only the window: the estimate is an upper bound
        assert kv < estimate.kv_per_token * ids.shape[1]
    else:
        assert estimate.kv_per_token * ids.shape[1] == kv
    d = handle.info.d_model
    assert estimate.jacobian == 7 * d * d * params[0].element_size()


def test_quantized_linear_weights_count_one_or_half_a_byte(tiny_dirs):
    info = resolve_model(ModelSpec(str(tiny_dirs["llama"]), dtype="bfloat16"))
    n, full = weight_bytes(info)
    blocks = load_model(ModelSpec(str(tiny_dirs["llama"]), dtype="bfloat16", device="cpu")).adapter
    model = load_model(ModelSpec(str(tiny_dirs["llama"]), device="cpu")).model
    linear = sum(m.weight.numel() for b in blocks.layers(model) for m in b.modules() if isinstance(m, torch.nn.Linear))
    for quant, per in (("8bit", 1.0), ("4bit", 0.5)):
        q = resolve_model(ModelSpec(str(tiny_dirs["llama"]), dtype="bfloat16", quantization=quant))
        assert weight_bytes(q) == (n, int(linear * per + (n - linear) * 2))
    assert full == 2 * n


def test_warning_when_the_device_is_too_small(tiny_dirs, monkeypatch):
    info = resolve_model(ModelSpec(str(tiny_dirs["gpt2"]), device="cpu"))
    assert estimate_memory(info).warning is None  # this machine has room for a tiny model
    monkeypatch.setattr(memory, "_host_available", lambda: 1000)
    estimate = estimate_memory(info)
    assert estimate.available == 1000 and estimate.needed > 1000
    assert "device 'map'" in estimate.warning and format_bytes(1000) in estimate.warning
    unknown = MemoryEstimate(1, 10**12, 0, 1, 0, 0, 0, "mps", None)
    assert unknown.warning is None  # nothing is claimed where nothing can be measured
    assert format_bytes(1536) == "1.5 KiB" and format_bytes(3 * 2**30) == "3.0 GiB"


def test_service_and_cli_report_before_loading(tiny_dirs, cache_dir, monkeypatch, capsys):
    service = Service()
    spec = ModelSpec(str(tiny_dirs["llama"]), device="cpu")
    assert service.memory(spec).n_params > 0 and service.resident is None  # nothing loaded
    from lldd_core import service as service_module

    monkeypatch.setattr(service_module, "_SERVICE", None)
    assert main(["memory", "--model", str(tiny_dirs["llama"]), "--device", "cpu", "--tokens", "16", "--json", "-"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["tokens"] == 16 and out["weights"] > 0 and out["warning"] is None
    monkeypatch.setattr(memory, "_host_available", lambda: 1000)
    monkeypatch.setattr(service_module, "_SERVICE", None)
    assert main(["memory", "--model", str(tiny_dirs["llama"]), "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "weights" in captured.out and "warning:" in captured.err
