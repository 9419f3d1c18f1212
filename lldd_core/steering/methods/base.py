"""What a steering method is: a frozen parameter dataclass and an object that checks and plans it.

A method (one file in this folder, one line in :mod:`.registry`) declares

* ``name`` (the ``--method`` value and the cache key's ``method``), ``label`` (how status lines name it),
  ``help`` (one line for the page and ``--help``);
* ``Params``: a frozen dataclass of its settings with today's defaults; each field made by :func:`option`
  says how it is offered to a user (its flag, range or choices, and help words), so the command line and
  the page build their inputs from it;
* what it needs: ``needs_dataset`` (a concept dataset; every method reads the concept along the texts
  when one is given) and :meth:`SteeringMethod.pieces` (the cached pieces its plan reads);
* :meth:`~SteeringMethod.check` (every setting in its :mod:`lldd_core.ranges` range, for this model),
  :meth:`~SteeringMethod.cache_params` (the entries its settings put into the ``steer`` cache key) and
  :meth:`~SteeringMethod.plan` (its interventions, a :class:`~lldd_core.steering.compare.SteeringPlan`).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ... import ranges as R
from ...analysis.gains import GainsSetup
from ...errors import InputError
from ...models.loading import ModelHandle
from ..compare import SteeringPlan
from ..pieces import SteeringJacobian

#: Cached pieces a method may declare, and the context field each arrives in.
PIECES = ("mean_jacobians", "steering_jacobian")

#: The settings of the four built-in methods: every ``steer`` key has carried all of them, ``null`` where
#: a method does not read one (a key of the flat signature of before the registry; the pinned keys keep it).
KEY_FIELDS = ("layers", "strength", "positions", "dy", "order", "steer_text", "lam", "variant", "q", "r", "qf")


@dataclass(frozen=True)
class Option:
    """How one settings field is offered to a user (the command line and the page read it).

    ``range``: a number (or with ``many``, comma-separated numbers), parsed and described by it: what the
    command line accepts before it knows the model (a method's :meth:`~SteeringMethod.check` may be
    stricter); ``choices``: the words the command line offers; ``default_text``: the default in words
    where the value itself (often ``None``) says little.
    """

    help: str
    range: R.Range | None = None
    many: bool = False
    choices: tuple[str, ...] | None = None
    default_text: str | None = None

    def flag(self, name: str) -> str:
        """The command-line flag of the field ``name``: its range's (``--layer``), else ``--steer-text``."""
        return self.range.option if self.range is not None else "--" + name.replace("_", "-")


def option(default: Any, help: str, **how: Any) -> Any:
    """A params field with ``default`` offered to users as :class:`Option` ``(help, **how)``."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **how)})


def options(params_type: type) -> list[tuple[dataclasses.Field, Option]]:
    """The fields of a params dataclass that users set, with how each is offered (declaration order)."""
    return [(f, f.metadata["option"]) for f in dataclasses.fields(params_type) if "option" in f.metadata]


@dataclass
class SteeringContext:
    """What a plan may read besides the model: the concept and the pieces its method declared.

    ``setup``: the concept's directions and operating prompts (:func:`~lldd_core.analysis.gains.prepare_gains`);
    ``mean_jacobians``: ``A_k`` ``[L, d, d]``; ``steering_jacobian``: the phrase's Jacobians (computed by the
    plan when absent); ``seed``: the split seed (the LLV basis's random completion).
    """

    setup: GainsSetup | None = None
    mean_jacobians: torch.Tensor | None = None
    steering_jacobian: SteeringJacobian | None = None
    seed: int = 0

    def readout(self, n_layers: int) -> torch.Tensor | None:
        """``v_L``, the concept's direction at the last block's output (``None`` without a concept)."""
        return self.setup.directions[n_layers] if self.setup is not None else None


class SteeringMethod(ABC):
    """One steering method (module doc). Subclasses set the class attributes and implement check and plan."""

    name: ClassVar[str]
    label: ClassVar[str]
    help: ClassVar[str]
    Params: ClassVar[type]
    needs_dataset: ClassVar[bool] = True

    def params(self, given: Any = None) -> Any:
        """``given`` as this method's ``Params``: ``None`` (the defaults), a ``Params`` or a dict of its fields."""
        if given is None:
            return self.Params()
        if isinstance(given, self.Params):
            return given
        if isinstance(given, dict):
            known = {f.name for f in dataclasses.fields(self.Params)}
            unknown = sorted(set(given) - known)
            if unknown:
                raise InputError(f"The {self.name} method has no setting {', '.join(map(repr, unknown))}: "
                                 f"it takes {', '.join(sorted(known)) or 'none'}.")
            return self.Params(**given)
        raise InputError(f"The {self.name} method takes {self.Params.__name__} settings (or a dict of them); "
                         f"got {type(given).__name__}.")

    @abstractmethod
    def check(self, params: Any, n_layers: int, d: int) -> Any:
        """``params`` with every setting checked for a model of ``n_layers`` blocks and hidden size ``d``
        (normalized: numbers as their kind, layers sorted), else :class:`InputError`."""

    def cache_params(self, params: Any) -> dict[str, Any]:
        """The entries the checked ``params`` put into the ``steer`` cache key (default: every field)."""
        return {f.name: _plain(getattr(params, f.name)) for f in dataclasses.fields(params)}

    def pieces(self, params: Any) -> dict[str, dict[str, Any]]:
        """The cached pieces (:data:`PIECES`) the plan of ``params`` reads, each with the keyword arguments
        of its computation (``steering_jacobian``: ``steer_text``, ``layer``, ``variant``). Default: none."""
        return {}

    @abstractmethod
    def plan(self, handle: ModelHandle, params: Any, context: SteeringContext) -> SteeringPlan:
        """The interventions of the checked ``params`` on ``handle``'s model."""


def check_layers(layers: Sequence[int] | None, rng: R.Range, n_layers: int) -> tuple[int, ...] | None:
    """``layers`` (``None``: the method's default) sorted, without repeats, each in ``rng`` for this model."""
    if layers is None:
        return None
    values = list(layers) if not isinstance(layers, str) else layers  # a string is refused by check_list
    return tuple(sorted(set(R.check_list(values, rng, hi=n_layers, max_len=n_layers + 1))))


def _plain(value: Any) -> Any:
    """A settings value as the cache key's JSON holds it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value
