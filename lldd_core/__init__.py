"""lldd core: locally linear analysis of causal language models.

Public API::

    from lldd_core import ModelSpec, load_model, detached_mode, jacobian_operator, analyze_jacobian

    handle = load_model(ModelSpec("gpt2", dtype="float64"))
    ids = handle.info.encode("The Golden Gate")
    op = jacobian_operator(handle.model, handle.adapter, torch.tensor(ids))
    full = op.full()                       # J_i for every token and the bias channel b
    y_hat = reconstruct(full.J, op.x0, full.b)   # equals op.y up to rounding
    svd = topk_svd(op, 8)                  # matrix-free top-8 triplets of every J_i, residual-checked
    spectra = analyze_spectrum(handle, ids)          # decoded to tokens (SpectrumResult)
    depth = analyze_layers(handle, ids)              # every layer's views (LayersResult)

Math conventions are in ``docs/ARCHITECTURE.md``. The core never imports streamlit.
"""

import importlib
from typing import Any

from ._version import __version__ as __version__  # re-exported: lldd_core.__version__

#: Public name -> the submodule that defines it. Imported on first use (PEP 562), so that
#: ``python -m lldd_core --help``, and Ctrl-C while torch is still importing, need no torch at package import.
_EXPORTS = {
    "ADAPTERS": "models.arch",
    "FamilyAdapter": "models.arch",
    "adapter_for": "models.arch",
    "supported_model_types": "models.arch",
    "InputError": "errors",
    "LLDDError": "errors",
    "ModelLoadError": "errors",
    "NumericalError": "errors",
    "ResourceError": "errors",
    "UnsupportedFamilyError": "errors",
    "FullJacobian": "forward.jacobian",
    "JacobianOperator": "forward.jacobian",
    "jacobian_operator": "forward.jacobian",
    "reconstruct": "forward.jacobian",
    "relative_error": "forward.jacobian",
    "JacobianResult": "analysis.jacobian",
    "analyze_jacobian": "analysis.jacobian",
    "LayersResult": "analysis.layers",
    "analyze_layers": "analysis.layers",
    "detached_mode": "forward.linearize",
    "live_mode": "forward.linearize",
    "ModelHandle": "models.loading",
    "ModelInfo": "models.loading",
    "ModelSpec": "models.loading",
    "load_model": "models.loading",
    "resolve_model": "models.loading",
    "Service": "service",
    "get_service": "service",
    "TopKSVD": "linalg.spectral",
    "svd_full": "linalg.spectral",
    "topk_svd": "linalg.spectral",
    "SpectrumResult": "analysis.spectrum",
    "analyze_spectrum": "analysis.spectrum",
    "SITES": "forward.views",
    "record_views": "forward.views",
}


def __getattr__(name: str) -> Any:
    """A public name (or a submodule) of the package, imported on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "ADAPTERS",
    "SITES",
    "FamilyAdapter",
    "FullJacobian",
    "InputError",
    "JacobianOperator",
    "JacobianResult",
    "LLDDError",
    "LayersResult",
    "ModelHandle",
    "ModelInfo",
    "ModelLoadError",
    "ModelSpec",
    "NumericalError",
    "ResourceError",
    "Service",
    "SpectrumResult",
    "TopKSVD",
    "UnsupportedFamilyError",
    "adapter_for",
    "analyze_jacobian",
    "analyze_layers",
    "analyze_spectrum",
    "detached_mode",
    "get_service",
    "jacobian_operator",
    "live_mode",
    "load_model",
    "reconstruct",
    "record_views",
    "relative_error",
    "resolve_model",
    "supported_model_types",
    "svd_full",
    "topk_svd",
]
