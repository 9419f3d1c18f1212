"""One frozen settings object per analysis: its defaults, its validation and its cache parameters.

A settings object is built once — from the command line's arguments (:meth:`Settings.from_args`),
a page's widgets, or a script's keywords — then checked against the model (:meth:`check`: every
number through its :class:`~lldd_core.ranges.Range`, bounds such as the hidden size from the
model's config) and passed down whole: the service keys the cache with :meth:`cache_params`, the
analysis reads its fields. The CLI's option defaults and the pages' widget defaults are these
classes' defaults (``tests/test_settings.py`` checks both).

This module imports no torch: ``--help`` builds its options from it.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from .. import ranges

if TYPE_CHECKING:
    from ..concepts.data import ConceptData

S = TypeVar("S", bound="Settings")

#: The spectrum methods: ``auto`` picks ``full`` (formed Jacobians), ``matrix_free`` or ``streamed`` (long
#: prompts: memory independent of ``T * d^2``) by cost (:func:`lldd_core.linalg.spectral.choose_method`).
SPECTRUM_METHODS = ("auto", "full", "matrix_free", "streamed")
#: The layer views (:mod:`lldd_core.forward.views`), in their canonical order.
SITES = ("cumulative", "block", "attention", "mlp")
#: How the LLV basis is completed beyond ``v_l`` (:mod:`lldd_core.linalg.llv`).
COMPLEMENTS = ("krylov", "random", "pca")
#: Predicted gains from each prompt's own Jacobians, or from the operating prompts' mean reduced model.
MODES = ("prompt", "population")


def _choice(value: str, choices: tuple[str, ...], what: str) -> str:
    from ..errors import InputError

    if value not in choices:
        raise InputError(f"Unknown {what} {value!r}: choose one of {', '.join(choices)}.")
    return value


class SplitSizes(NamedTuple):
    """Examples per class in the concept, operating and evaluation splits (balanced, disjoint, seeded).

    A tuple, so ``(400, 200, 200)`` is one; :meth:`check` refuses what lies outside the ranges.
    """

    concept: int = 400
    operating: int = 200
    evaluation: int = 200

    def check(self) -> SplitSizes:
        return SplitSizes(*ranges.check_sizes(tuple(self)))

    @classmethod
    def of(cls, value: Any) -> SplitSizes:
        """``value`` (a sequence of three numbers, or ``"400,200,200"``) as checked split sizes."""
        if isinstance(value, str):
            return cls(*ranges.parse_sizes(value))
        return cls(*ranges.check_sizes(value))

    def text(self) -> str:
        return ",".join(map(str, self))


@dataclass(frozen=True)
class Settings:
    """Base of every analysis's settings: construction from keywords or parsed arguments."""

    @classmethod
    def resolve(cls: type[S], settings: S | None, overrides: dict[str, Any]) -> S:
        """``settings`` (default: the defaults) with ``overrides`` (field names) replaced — the keyword
        form scripts and tests use; an unknown name is a :class:`TypeError` (a caller's bug)."""
        base = cls() if settings is None else settings
        if not isinstance(base, cls):
            raise TypeError(f"expected {cls.__name__}, got {type(base).__name__}")
        return replace(base, **overrides) if overrides else base

    @classmethod
    def from_args(cls: type[S], args: argparse.Namespace, **extra: Any) -> S:
        """The settings of a parsed command line: each field from the option of the same name."""
        values = {f.name: getattr(args, f.name) for f in fields(cls) if hasattr(args, f.name)}
        return cls(**{**values, **extra})

    @classmethod
    def default(cls, name: str) -> Any:
        """The default of field ``name`` (what the CLI and the pages start from)."""
        for f in fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                return f.default_factory()  # type: ignore[misc]
        raise KeyError(name)


@dataclass(frozen=True)
class JacobianSettings(Settings):
    """The detached Jacobian of the last token's output ``x_layer`` (:mod:`lldd_core.analysis.jacobian`).

    ``layer``: ``1..L`` (default ``L``, the last block); ``final_norm``: through the final norm.
    """

    layer: int | None = None
    final_norm: bool = True

    def check(self, n_layers: int) -> JacobianSettings:
        layer = n_layers if self.layer is None else ranges.LAYER.check(self.layer, hi=n_layers)
        return replace(self, layer=layer, final_norm=bool(self.final_norm))

    def cache_params(self) -> dict[str, Any]:
        return {"layer": self.layer, "final_norm": bool(self.final_norm)}


@dataclass(frozen=True)
class SpectrumSettings(Settings):
    """Top-``k`` triplets of every ``J_i`` decoded to ``n_decode`` tokens (:mod:`lldd_core.analysis.spectrum`)."""

    layer: int | None = None
    final_norm: bool = True
    k: int = 8
    n_decode: int = 8
    method: str = "auto"
    positions: tuple[int, ...] | None = None  # input token indices i of x_{0,i} (negative: from the end); None: all

    def check(self, n_layers: int, d_model: int) -> SpectrumSettings:
        layer = n_layers if self.layer is None else ranges.LAYER.check(self.layer, hi=n_layers)
        k, n_decode = ranges.TOP_K.check(self.k, hi=d_model), ranges.DECODE.check(self.n_decode)
        return replace(self, layer=layer, final_norm=bool(self.final_norm), k=k, n_decode=n_decode,
                       method=_choice(self.method, SPECTRUM_METHODS, "method"))

    def for_prompt(self, n_tokens: int) -> SpectrumSettings:
        """``positions`` as sorted, distinct indices ``0..T-1`` of a ``n_tokens``-token prompt (``None`` if all)."""
        from ..errors import InputError

        if self.positions is None:
            return self
        raw = self.positions
        if isinstance(raw, str):
            raw = tuple(part.strip() for part in raw.split(",") if part.strip())
        try:
            values = [int(p) for p in raw]
        except (TypeError, ValueError):
            raise InputError(f"Positions must be token indices, e.g. 0,3,-1; got {self.positions!r}.") from None
        bad = [p for p in values if not -n_tokens <= p < n_tokens]
        if bad or not values:
            raise InputError(f"Positions {bad or 'none'} do not index the prompt's {n_tokens} tokens "
                             f"(0..{n_tokens - 1}, or negative from the end).")
        chosen = tuple(sorted({p % n_tokens for p in values}))
        return replace(self, positions=None if len(chosen) == n_tokens else chosen)

    def cache_params(self) -> dict[str, Any]:
        out = {"layer": self.layer, "final_norm": bool(self.final_norm), "k": self.k, "n_decode": self.n_decode,
               "method": self.method}
        if self.positions is not None:  # all positions keep the key they had before positions existed
            out["positions"] = list(self.positions)
        return out


@dataclass(frozen=True)
class LayersSettings(Settings):
    """Every layer's views of one prompt (:mod:`lldd_core.analysis.layers`); ``sites``: a subset of
    :data:`SITES` (a comma-separated string is accepted), kept in canonical order."""

    k: int = 8
    n_decode: int = 5
    lens: bool = True
    method: str = "auto"
    sites: tuple[str, ...] = SITES

    def check(self, d_model: int) -> LayersSettings:
        from ..errors import InputError

        k, n_decode = ranges.TOP_K.check(self.k, hi=d_model), ranges.DECODE.check(self.n_decode)
        method = _choice(self.method, SPECTRUM_METHODS, "method")
        sites = self.sites
        if isinstance(sites, str):
            sites = tuple(part.strip() for part in sites.split(","))
        unknown = [s for s in sites if s not in SITES]
        if unknown:
            raise InputError(f"Unknown site(s) {', '.join(map(repr, unknown))}: choose from {', '.join(SITES)}.")
        sites = tuple(s for s in SITES if s in set(sites))  # canonical order: one cache entry per set
        if not sites:
            raise InputError(f"Choose at least one site of {', '.join(SITES)}.")
        return replace(self, k=k, n_decode=n_decode, lens=bool(self.lens), method=method, sites=sites)

    def cache_params(self) -> dict[str, Any]:
        return {"k": self.k, "n_decode": self.n_decode, "lens": bool(self.lens), "method": self.method,
                "sites": list(self.sites)}


@dataclass(frozen=True)
class GraphSettings(Settings):
    """The exact attribution graph (:mod:`lldd_core.analysis.graph`). ``target``: one token's text (default:
    the top next tokens); ``node_threshold = None`` keeps every node; ``max_nodes = None`` visits all;
    ``n_decode``: tokens per decoding of each kept neuron."""

    target: str | None = None
    node_threshold: float | None = 0.8
    edge_threshold: float = 0.98
    max_nodes: int | None = 1024
    n_decode: int = 5

    def check(self) -> GraphSettings:
        return replace(
            self,
            node_threshold=None if self.node_threshold is None else ranges.NODE_THRESHOLD.check(self.node_threshold),
            edge_threshold=ranges.EDGE_THRESHOLD.check(self.edge_threshold),
            max_nodes=None if self.max_nodes is None else ranges.MAX_NODES.check(self.max_nodes),
            n_decode=ranges.DECODE.check(self.n_decode),
        )

    def cache_params(self, target_id: int | None) -> dict[str, Any]:
        """The key holds the target's token id (two spellings of one token are one entry)."""
        return {"target": target_id, "node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                "max_nodes": self.max_nodes, "n_decode": self.n_decode}


@dataclass(frozen=True)
class ConceptSettings(Settings):
    """What every analysis of a concept dataset shares: the evaluation prompts, the splits and their seed."""

    n_eval: int = 32
    sizes: SplitSizes = SplitSizes()
    seed: int = 0

    def _checked_concept(self) -> dict[str, Any]:
        return {"n_eval": ranges.N_EVAL.check(self.n_eval), "sizes": SplitSizes.of(self.sizes),
                "seed": ranges.SEED.check(self.seed)}


@dataclass(frozen=True)
class GainsSettings(ConceptSettings):
    """Gain curves of a concept (:mod:`lldd_core.analysis.gains`): surrogate ``order`` and ``complement``,
    injection size ``eps`` of the measured gains, ``mode`` of the predicted ones."""

    order: int = 32
    eps: float = 0.1
    complement: str = "krylov"
    mode: str = "prompt"

    def check(self, d_model: int | None = None) -> GainsSettings:
        """Every setting in its range; the order against the hidden size when ``d_model`` is known."""
        return replace(self, order=ranges.ORDER.check(self.order, hi=d_model), eps=ranges.EPS.check(self.eps),
                       **self._checked_concept(), complement=_choice(self.complement, COMPLEMENTS, "complement"),
                       mode=_choice(self.mode, MODES, "mode"))

    def cache_params(self, data: ConceptData) -> dict[str, Any]:
        """The cache key's parameters: the dataset by name and content fingerprint, then every setting."""
        return {"dataset": data.name, "fingerprint": data.fingerprint(), "order": int(self.order),
                "eps": float(self.eps), "n_eval": int(self.n_eval), "complement": self.complement, "mode": self.mode,
                "sizes": [int(n) for n in self.sizes], "seed": int(self.seed)}

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (``sizes`` as a list)."""
        return {"order": int(self.order), "eps": float(self.eps), "n_eval": int(self.n_eval),
                "complement": self.complement, "mode": self.mode, "sizes": [int(n) for n in self.sizes],
                "seed": int(self.seed)}


@dataclass(frozen=True)
class ControlSettings(ConceptSettings):
    """Least-energy and heuristic schedules for each target ``Δy`` (:mod:`lldd_core.analysis.control`),
    each validated in the model by bisection to relative tolerance ``tol``."""

    targets: tuple[float, ...] = (1.0,)
    order: int = 32
    complement: str = "krylov"
    n_eval: int = 16
    tol: float = 1e-2

    def check(self, d_model: int | None = None) -> ControlSettings:
        targets = tuple(ranges.check_list(list(self.targets) if not isinstance(self.targets, str) else self.targets,
                                          ranges.TARGET, max_len=ranges.MAX_TARGETS))
        return replace(self, targets=targets, order=ranges.ORDER.check(self.order, hi=d_model),
                       complement=_choice(self.complement, COMPLEMENTS, "complement"), tol=ranges.TOL.check(self.tol),
                       **self._checked_concept())

    def gains(self) -> GainsSettings:
        """The gains settings the schedules' surrogate uses (population mode; ε unused)."""
        return GainsSettings(order=self.order, eps=0.0, complement=self.complement, mode="population",
                             n_eval=self.n_eval, sizes=self.sizes, seed=self.seed)

    def cache_params(self, data: ConceptData) -> dict[str, Any]:
        return {**self.gains().cache_params(data), "targets": list(self.targets), "tol": float(self.tol)}
