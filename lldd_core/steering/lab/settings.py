"""What a Steering-lab sweep runs and how its answers are judged: :class:`SweepSettings`.

The sweep's cells are ``(method, layer, strength)``: each method of ``methods`` at each of its knob's values
(:mod:`.knobs`; ``strengths`` per method, else the knob's default grid) and, for the methods that steer at one
layer (additive, Jacobian), at each of ``layers`` (default: additive ``1..L-1``, leaving out ``x_0`` whose
direction is flagged or absent on most models; Jacobian its default layer). Every cell continues the same
evaluation prompts (``prompts``, else the first ``n_prompts`` evaluation-split texts of the class the steering
moves away from, label 0) greedily for ``max_new_tokens`` tokens.

``success_by``, ``success_target`` (a share of texts) and ``fluency_budget`` (perplexity over the unsteered perplexity) only
judge the cells (:mod:`.answers`): they are not part of any cell's cache key, so changing them recomputes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ... import ranges as R
from ...analysis.settings import Settings, SplitSizes
from ...demo.corpus import FACT_PROMPTS
from ...errors import InputError
from .knobs import knob, swept

#: Neutral prompts of the side-effect measure: world facts, far from any concept dataset's texts.
NEUTRAL_PROMPTS: tuple[str, ...] = tuple(prompt for prompt, _ in FACT_PROMPTS[:6])
#: The most cells one sweep may hold.
MAX_CELLS = 400


@dataclass(frozen=True)
class SweepSettings(Settings):
    """One sweep (module doc). ``strengths``: ``((method, (values…)), …)``, methods left out use their knob's
    defaults; ``classifier``: a local sequence-classification model (path or cached id) as external judge,
    ``classifier_label`` its label of the target class (default: the dataset's target class by name);
    ``fluency_model``: another local causal LM whose perplexity is reported beside the model's own;
    ``steer_text``: the Jacobian method's phrase ("": the concept split's first target-class text);
    ``success_by``: ``verdict``, ``probe`` or ``judge`` (:data:`~.answers.SUCCESS_BY`; default: the judge when
    there is one, else the verdict); ``order``: the LLV surrogate's order for the best-layer prediction (default: the LLV method's)."""

    methods: tuple[str, ...] = ("additive", "llv", "jacobian", "lqr")
    layers: tuple[int, ...] | None = None
    strengths: tuple[tuple[str, tuple[float, ...]], ...] = ()
    prompts: tuple[str, ...] = ()
    n_prompts: int = 8
    max_new_tokens: int = 16
    sizes: tuple[int, int, int] = tuple(SplitSizes())
    seed: int = 0
    neutral: tuple[str, ...] = NEUTRAL_PROMPTS
    classifier: str | None = None
    classifier_label: str | None = None
    fluency_model: str | None = None
    steer_text: str = ""
    order: int | None = None  # None: the LLV method's own default, so its cells and the prediction share one surrogate
    success_by: str | None = None
    success_target: float = 0.75
    fluency_budget: float = 3.0

    def values(self, method: str) -> tuple[float, ...]:
        """The knob values swept for ``method`` (its own, else the knob's defaults)."""
        return dict(self.strengths).get(method, knob(method).defaults)

    def method_layers(self, method: str, n_layers: int) -> tuple[int | None, ...]:
        """The layers ``method``'s cells steer at (``(None,)`` for a method that steers every layer itself)."""
        k = knob(method)
        if not k.layered:
            return (None,)
        if self.layers is not None:
            return tuple(self.layers)
        if method == "jacobian":
            from ..pieces import default_jacobian_layer

            return (default_jacobian_layer(n_layers, "additive"),)
        return tuple(range(1, n_layers)) if n_layers > 1 else (0,)

    def check(self, n_layers: int, d: int) -> SweepSettings:
        """Every setting in its range for a model of ``n_layers`` blocks and hidden size ``d``, else
        :class:`InputError`; methods in registry order without repeats, values and layers sorted."""
        methods = tuple(dict.fromkeys(self.methods))
        if not methods:
            raise InputError(f"Choose at least one method to sweep: {', '.join(swept())}.")
        for method in methods:
            knob(method)
        methods = tuple(m for m in swept() if m in methods)
        strengths = []
        for method, values in self.strengths:
            k = knob(method)
            if method not in methods:
                continue
            strengths.append((method, tuple(sorted(set(float(v) for v in R.check_list(list(values), k.range))))))
        layers = None if self.layers is None else tuple(sorted(set(
            R.check_list(list(self.layers), R.STEER_LAYERS, hi=n_layers, max_len=n_layers + 1))))
        checked = replace(
            self, methods=methods, layers=layers, strengths=tuple(strengths),
            prompts=tuple(str(p) for p in self.prompts), n_prompts=R.N_PROMPTS.check(self.n_prompts),
            max_new_tokens=R.MAX_NEW.check(self.max_new_tokens), sizes=R.check_sizes(self.sizes),
            seed=R.SEED.check(self.seed), neutral=tuple(str(p) for p in self.neutral),
            order=R.ORDER.check(_llv_order() if self.order is None else self.order, hi=d), success_target=R.SUCCESS_TARGET.check(self.success_target),
            fluency_budget=R.FLUENCY_BUDGET.check(self.fluency_budget), steer_text=str(self.steer_text),
            classifier=_optional_text(self.classifier), classifier_label=_optional_text(self.classifier_label),
            fluency_model=_optional_text(self.fluency_model))
        if checked.success_by not in (None, "verdict", "probe", "judge"):
            raise InputError(f"Success is judged by verdict, probe or judge; got {checked.success_by!r}.")
        if checked.success_by == "judge" and checked.classifier is None:
            raise InputError("Success by the judge needs a classifier: give one (--classifier PATH).")
        if any(not p.strip() for p in checked.prompts):
            raise InputError("An evaluation prompt is empty: give each prompt a few words.")
        if not checked.neutral or any(not p.strip() for p in checked.neutral):
            raise InputError("The side-effect measure needs neutral prompts, none of them empty.")
        for method in methods:
            k = knob(method)
            for layer in checked.method_layers(method, n_layers):
                if layer is not None:
                    k.layer_range.check(layer, hi=n_layers)
        n_cells = sum(len(checked.values(m)) * len(checked.method_layers(m, n_layers)) for m in methods)
        if n_cells > MAX_CELLS:
            raise InputError(f"The sweep has {n_cells} cells; at most {MAX_CELLS} are allowed: sweep fewer layers "
                             "or strengths.")
        return checked

    def cache_params(self) -> dict[str, Any]:
        """What every cell's key shares: the prompts, the generation, the splits, the instruments (neither the
        cells themselves nor the success target and fluency budget, which only judge them)."""
        return {"prompts": list(self.prompts), "n_prompts": int(self.n_prompts),
                "max_new_tokens": int(self.max_new_tokens), "sizes": [int(n) for n in self.sizes],
                "seed": int(self.seed), "neutral": list(self.neutral), "classifier": self.classifier,
                "classifier_label": self.classifier_label, "fluency_model": self.fluency_model,
                "steer_text": self.steer_text}


def _llv_order() -> int:
    from ..methods.registry import get as get_method

    return int(get_method("llv").Params().order)


def _optional_text(value: Any) -> str | None:
    """``None`` or blank → ``None``; anything else as stripped text."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def parse_strengths(items: list[str] | None, methods: tuple[str, ...]) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``--strengths`` values: ``0,4,16`` (every method) or ``llv=0,10,20`` (one method), later ones win."""
    out: dict[str, tuple[float, ...]] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        targets = [name.strip()] if sep else list(methods)
        values = R.parse_list(text if sep else item, R.SWEEP_STRENGTH)
        for method in targets:
            knob(method)
            out[method] = tuple(float(v) for v in values)
    return tuple(out.items())
