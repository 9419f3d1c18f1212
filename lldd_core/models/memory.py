"""Memory a model and its analyses will need, estimated from the config before any weight is loaded.

* weights: the parameter count (the model built on the ``meta`` device: exact, no memory) times
  the bytes per parameter of the dtype; with 8-bit / 4-bit quantization the blocks' linear weights
  take 1 / 0.5 bytes (embeddings, norms and the head stay in the dtype, as bitsandbytes leaves them).
  A mixture-of-experts model counts every expert (all are loaded, whatever the router picks); its
  experts are 3-D parameters, not ``nn.Linear``, so bitsandbytes leaves them in the dtype too, and
  MXFP4 experts (GPT-OSS) are dequantized at load, so the dtype's size is what they take;
* KV cache per token: ``2 · L · n_kv_heads · head_dim`` values (generation, prefix caches; an upper
  bound for sliding-window layers, which keep only their window);
* the full detached Jacobian of a ``T``-token prompt: ``T · d²`` values (the matrix-free path
  needs ``O(T · d · k)`` instead); LQR's mean block Jacobians ``L · d²``; LLV bases ``(L+1) · d · r``.

Available memory: the free memory of the chosen GPU (all GPUs plus the host for ``device="map"``,
which offloads the rest to disk), or the host's available memory for the CPU. Estimates, not
guarantees: activations and the framework's own overhead come on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .arch import text_config
from .loading import DTYPES, ModelInfo, resolve_device

#: Bytes per quantized linear weight.
QUANT_BYTES = {"8bit": 1.0, "4bit": 0.5}
#: Share of the available memory the weights and KV cache may take before we warn (activations,
#: the allocator and other processes need the rest).
HEADROOM = 0.9


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part (see module doc); ``available`` is ``None`` where it cannot be measured."""

    n_params: int
    weights: int
    kv_per_token: int
    tokens: int
    jacobian: int
    mean_jacobians: int
    bases: int
    device: str
    available: int | None
    order: int = 32  # the LLV order the bases are counted for

    @property
    def needed(self) -> int:
        """Weights plus the KV cache of ``tokens`` tokens."""
        return self.weights + self.kv_per_token * self.tokens

    @property
    def warning(self) -> str | None:
        """A sentence saying what to do when the model likely does not fit, else ``None``."""
        if self.available is None or self.needed <= HEADROOM * self.available:
            return None
        return (f"This model needs about {format_bytes(self.needed)} (weights and KV cache) but {self.device} has "
                f"{format_bytes(self.available)} available: choose a lower precision or quantization, device 'map' "
                "(offloads what does not fit), or a smaller model.")

    def rows(self) -> list[tuple[str, int]]:
        """``(what, bytes)`` for display."""
        return [("weights", self.weights), (f"KV cache ({self.tokens} tokens)", self.kv_per_token * self.tokens),
                (f"full Jacobian ({self.tokens} tokens)", self.jacobian), ("LQR mean Jacobians", self.mean_jacobians),
                (f"LLV bases (order {self.order})", self.bases)]


def format_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable: the last unit always returns")


def _meta_model(info: ModelInfo) -> nn.Module:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(info.config, trust_remote_code=info.spec.trust_remote_code)


def weight_bytes(info: ModelInfo, model: nn.Module | None = None) -> tuple[int, int]:
    """``(parameter count, bytes of the weights)`` for ``info``'s dtype and quantization."""
    model = model if model is not None else _meta_model(info)
    item = torch.empty((), dtype=DTYPES[info.spec.dtype]).element_size()
    n_params = sum(p.numel() for p in model.parameters())
    quant = QUANT_BYTES.get(info.spec.quantization)
    if quant is None:
        return n_params, n_params * item
    linear = sum(m.weight.numel() for block in info.adapter.layers(model) for m in block.modules()
                 if isinstance(m, nn.Linear))
    return n_params, int(linear * quant + (n_params - linear) * item)


def available_bytes(device: str) -> int | None:
    """Free memory where ``device`` (a ``ModelSpec.device``) puts the weights; ``None`` if unknown."""
    if device == "map":
        gpus = sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())) \
            if torch.cuda.is_available() else 0
        host = _host_available()
        return None if host is None else gpus + host
    dev = resolve_device(device)
    if dev.type == "cuda":
        return int(torch.cuda.mem_get_info(dev.index or 0)[0])
    if dev.type == "cpu":
        return _host_available()
    return None


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def estimate_memory(info: ModelInfo, tokens: int = 128, order: int = 32,
                    weights: tuple[int, int] | None = None) -> MemoryEstimate:
    """The estimate for ``info`` (config only: nothing is loaded) with prompts of ``tokens`` tokens;
    ``weights``: :func:`weight_bytes` if already known (it builds the model on the meta device)."""
    cfg = text_config(info.config)  # a multimodal config's language model (its KV cache and width)
    n_params, weights = weights if weights is not None else weight_bytes(info)
    item = torch.empty((), dtype=DTYPES[info.spec.dtype]).element_size()
    L, d = info.n_layers, info.d_model
    heads = int(getattr(cfg, "num_attention_heads", 1) or 1)
    kv_heads = int(getattr(cfg, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(cfg, "head_dim", None) or d // heads)
    device = resolve_device(info.spec.device)
    where = "the GPUs and host memory" if info.spec.device == "map" else (
        f"the GPU ({device})" if device.type == "cuda" else "this machine" if device.type == "cpu" else str(device))
    return MemoryEstimate(
        n_params=int(n_params), weights=int(weights), kv_per_token=2 * L * kv_heads * head_dim * item,
        tokens=int(tokens), jacobian=int(tokens) * d * d * item, mean_jacobians=L * d * d * item,
        bases=(L + 1) * d * min(order, d) * item, device=where, available=available_bytes(info.spec.device),
        order=min(order, d),
    )

