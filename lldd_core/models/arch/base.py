"""The family adapter: where a model family keeps its blocks, norms and activations.

An adapter answers structural questions only; :mod:`lldd_core.forward.linearize` turns the answers into the
detached (locally linear) forward. Most Hugging Face decoder-only families share one layout
(``model.get_decoder().layers`` / ``.norm``), so a new family is usually a subclass that sets a few
class attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

#: Modules defined in these Python modules are activation functions.
_ACTIVATION_MODULES = ("transformers.activations", "torch.nn.modules.activation")
#: How a mixture-of-experts model runs its experts (``from_pretrained(experts_implementation=...)``): the
#: per-expert loop. Transformers 5 defaults to ``grouped_mm``, whose kernels refuse float64; ``batched_mm``
#: gathers one weight copy per (token, expert) pair (gigabytes per token at Mixtral's size). The loop runs
#: in every dtype lldd offers, with one matmul per expert hit, and gives thread-count independent sums.
EXPERTS_IMPLEMENTATION = "eager"


def is_activation(module: nn.Module) -> bool:
    """True for elementwise activation modules (``ACT2FN`` entries and ``torch.nn`` activations)."""
    cls = type(module)
    return cls.__module__ in _ACTIVATION_MODULES and "Attention" not in cls.__name__


def is_layer_norm(module: nn.Module) -> bool:
    """True for mean-centering norms (LayerNorm variants); other norms are RMSNorms."""
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")


def is_norm(module: nn.Module) -> bool:
    """True for LayerNorm and RMSNorm variants (matched by class, since each family defines its own)."""
    name = type(module).__name__
    return isinstance(module, nn.LayerNorm) or name.endswith("RMSNorm") or name.endswith("LayerNorm")


def text_config(config: PreTrainedConfig) -> PreTrainedConfig:
    """The language model's config: ``config`` itself, or a multimodal config's text part (Gemma 3)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


class FamilyAdapter:
    """Structural description of one model family.

    Attributes:
        name: human-readable family name shown to users.
        model_types: the ``config.model_type`` values this adapter serves.
        gated_mlp: True when the MLP is ``down(act(gate(x)) * up(x))``; the whole activated gate branch
            ``act(gate(x))`` is then detached. False for plain MLPs ``fc2(act(fc1(x)))``, where the
            pre-activation ``z`` is multiplied by the detached factor ``act(z)/z``.
        norm_weight_offset: RMSNorm computes ``x / rms(x) * (offset + w)``; Gemma uses ``1 + w``.
        biases: whether the family's linear layers or norms carry biases (documentation and tests;
            the bias channel itself is derived from the parameters named ``*bias``).
        attention_output / mlp_output: names of the block children whose outputs are the attention
            and MLP terms added to the residual stream (after any post-norm, before the add).
        mlp_down: dotted path, inside a block, of the MLP's output projection; its input is the MLP's
            hidden vector (``act(gate) * up`` or ``act(z)``), one value per neuron (attribution graphs).
        mlp_up / mlp_gate: the projections the neurons read with: ``up`` (plain MLPs: the input
            projection ``fc_in``, before the activation) and the gate (``None`` for plain MLPs).
            ``mlp_gate_up_fused``: ``mlp_up`` is one fused projection, gate rows first, then up rows (Phi-3).
        mlp_norm: the norm in front of the MLP (``None`` when the MLP reads the stream directly, OLMo 2);
            :meth:`mlp_norm_module` resolves it per block (StableLM's depends on its config).
        experts: a mixture-of-experts family: every MLP (or most) is ``sum_e w_e(x) E_e(x)`` over the
            router's top-k experts ``e``. Loading runs the experts eagerly (:data:`EXPERTS_IMPLEMENTATION`);
            attribution graphs refuse such models (their nodes are one MLP's neurons).
        router: dotted path, inside a block, of the MoE router (``None`` for dense families); detached
            mode freezes its outputs, so the top-k choice and its weights are constants at this input. Blocks
            without one (dense layers of a partly sparse model) are skipped.
        router_softmax_first: the router is ``softmax`` over all experts, then top-k (renormalized when
            ``norm_topk_prob``; Mixtral always), with the softmax upcast to float32 in stock transformers;
            a float64 live mode recomputes it in float64 (GPT-OSS: top-k logits, then a softmax in the
            model's dtype, needs nothing).
        frozen: further dotted paths whose outputs detached mode freezes (Qwen2-MoE's shared-expert gate
            logit, so its sigmoid factor is constant).

    Scaling multipliers (Granite, Cohere) are hooks, not attributes, since they live in the config:
    :meth:`residual_multiplier` ``r`` (block: ``x + r * term``) and :meth:`logit_multiplier` ``c``
    (``logits = c * unembed(final_norm(x_L))``). Multipliers applied *before* block 0 (Granite's
    ``embedding_multiplier``, Gemma's ``sqrt(d)``) are part of ``x_0`` and need no hook.
    """

    name: str = "?"
    model_types: tuple[str, ...] = ()
    gated_mlp: bool = True
    norm_weight_offset: float = 0.0
    biases: bool = False
    attention_output: str = "self_attn"
    mlp_output: str = "mlp"
    mlp_down: str = "mlp.down_proj"
    mlp_up: str = "mlp.up_proj"
    mlp_gate: str | None = "mlp.gate_proj"
    mlp_gate_up_fused: bool = False
    mlp_norm: str | None = "post_attention_layernorm"
    experts: bool = False
    router: str | None = None
    router_softmax_first: bool = False
    frozen: tuple[str, ...] = ()

    # --- where things live -------------------------------------------------------------------
    def decoder(self, model: nn.Module) -> nn.Module:
        """The module that owns the blocks and the final norm."""
        return model.get_decoder()

    def layers(self, model: nn.Module) -> nn.ModuleList:
        """The transformer blocks, in depth order: block ``l`` maps ``x_l`` to ``x_{l+1}``."""
        return self.decoder(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied to ``x_L`` before the unembedding."""
        return self.decoder(model).norm

    def input_embedding(self, model: nn.Module) -> nn.Module:
        return model.get_input_embeddings()

    def unembedding(self, model: nn.Module) -> nn.Module:
        return model.get_output_embeddings()

    def sublayer(self, block: nn.Module, site: str) -> nn.Module:
        """The child of ``block`` whose output, times :meth:`residual_multiplier`, is the ``site``
        (``"attention"`` or ``"mlp"``) term of the residual."""
        name = {"attention": self.attention_output, "mlp": self.mlp_output}[site]
        return getattr(block, name)

    def mlp_norm_module(self, block: nn.Module) -> nn.Module | None:
        """The norm whose output the MLP of ``block`` reads (``None``: it reads the stream itself)."""
        return block.get_submodule(self.mlp_norm) if self.mlp_norm else None

    def text_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        """Every module a text-only prompt runs through (a multimodal model leaves out its vision tower);
        the bias channel scales the biases of these."""
        yield from model.modules()

    # --- scaling multipliers -------------------------------------------------------------------
    def residual_multiplier(self, model: nn.Module) -> float:
        """``r`` in ``x_{l+1} = x_l + r * sublayer(...)`` (1 but for Granite)."""
        return 1.0

    def logit_multiplier(self, model: nn.Module) -> float:
        """``c`` in ``logits = c * unembed(final_norm(x_L))``, before any soft-capping (1 but for Granite, Cohere)."""
        return 1.0

    # --- what to linearize ---------------------------------------------------------------------
    def norms(self, model: nn.Module) -> Iterator[nn.Module]:
        """Every norm on the residual path, inside blocks (q/k norms too) and the final one."""
        yield from (m for m in self.layers(model).modules() if is_norm(m))
        yield self.final_norm(model)

    def activations(self, model: nn.Module) -> Iterator[nn.Module]:
        """The MLP activation modules of every block."""
        yield from (m for m in self.layers(model).modules() if is_activation(m))

    def _submodules(self, model: nn.Module, paths: tuple[str, ...]) -> Iterator[nn.Module]:
        for block in self.layers(model):
            for path in paths:
                try:
                    yield block.get_submodule(path)
                except AttributeError:  # a dense layer of a partly sparse model
                    continue

    def routers(self, model: nn.Module) -> Iterator[nn.Module]:
        """The MoE router of every block that has one."""
        yield from self._submodules(model, (self.router,) if self.router else ())

    def frozen_modules(self, model: nn.Module) -> Iterator[nn.Module]:
        """The modules whose outputs detached mode freezes: routers, then the ``frozen`` paths."""
        yield from self.routers(model)
        yield from self._submodules(model, self.frozen)

    def detached_methods(self, model: nn.Module) -> Iterator[tuple[nn.Module, str, Callable]]:
        """Extra ``(module, method name, function)`` that detached mode binds to the module for its
        body (a family's own gated activation that is not an activation module, GPT-OSS); none by default."""
        return iter(())

    def max_positions(self, config: PreTrainedConfig) -> int | None:
        """Longest sequence the model was built for (``None`` when unbounded)."""
        config = text_config(config)
        for attr in ("max_position_embeddings", "n_positions"):
            value = getattr(config, attr, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
