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

__version__ = "0.1.0"

from .arch import ADAPTERS, FamilyAdapter, adapter_for, supported_model_types
from .errors import InputError, LLDDError, ModelLoadError, NumericalError, ResourceError, UnsupportedFamilyError
from .jacobian import FullJacobian, JacobianOperator, jacobian_operator, reconstruct, relative_error
from .jacobian_analysis import JacobianResult, analyze_jacobian
from .layers_analysis import LayersResult, analyze_layers
from .linearize import detached_mode, live_mode
from .models import ModelHandle, ModelInfo, ModelSpec, load_model, resolve_model
from .service import Service, get_service
from .spectral import TopKSVD, svd_full, topk_svd
from .spectrum_analysis import SpectrumResult, analyze_spectrum
from .views import SITES, record_views

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
