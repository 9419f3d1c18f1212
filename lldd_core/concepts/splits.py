"""The paper's balanced, disjoint concept / operating / evaluation splits of a concept dataset.

The default request, the paper's 400/200/200 per class, means *the paper's sizes as far as the
dataset allows*: a dataset with fewer than 800 examples in its smaller class gets the largest balanced
sizes in the same 2:1:1 proportions (:func:`default_sizes`), and that is what was asked for — no
"shrunk" note. Any other request that does not fit is shrunk by the same rule and says so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .data import MIN_PER_CLASS, MIN_PER_SPLIT, PAPER_PER_CLASS, ConceptData


@dataclass(frozen=True, eq=False)
class Splits:
    """Balanced, disjoint concept / operating / evaluation splits of one :class:`ConceptData`.

    ``indices[s]`` are the rows of the parent dataset in split ``s``; ``per_class[s]`` the examples
    of each class in it; ``requested`` what was asked for (they differ when the data was too small).
    """

    concept: ConceptData
    operating: ConceptData
    evaluation: ConceptData
    indices: dict[str, np.ndarray]
    per_class: dict[str, int]
    requested: dict[str, int]
    seed: int
    available_per_class: int = field(default=0)

    @property
    def fitted(self) -> bool:
        """The default request (the paper's sizes) was fitted to a smaller dataset: expected, not a warning."""
        return is_fitted(self.requested, self.per_class)

    @property
    def shrunk(self) -> bool:
        """Whether sizes the user chose were reduced because the dataset was too small."""
        return self.per_class != self.requested and not self.fitted

    def describe(self) -> str:
        """One line for the UI: the sizes, and why they are smaller than asked if they are."""
        sizes = "/".join(str(self.per_class[s]) for s in MIN_PER_SPLIT)
        line = f"{sizes} per class (concept/operating/evaluation)"
        if self.fitted:
            line += (f": the default {'/'.join(map(str, PAPER_PER_CLASS.values()))} fitted to the "
                     f"{self.available_per_class} examples of the smaller class of {self.concept.name!r}")
        elif self.shrunk:
            asked = "/".join(str(self.requested[s]) for s in MIN_PER_SPLIT)
            line += (f", shrunk from {asked}: the smaller class has only {self.available_per_class} examples "
                     f"in {self.concept.name!r}")
        return line


def split_sizes(available: int, requested: dict[str, int]) -> dict[str, int]:
    """Per-class split sizes when each class has ``available`` examples.

    Rule: if ``available >= sum(requested)`` the requested sizes are used. Otherwise each split gets
    its share ``floor(available * requested[s] / sum(requested))``, raised to its minimum
    (:data:`MIN_PER_SPLIT`); if that overshoots ``available``, the largest split gives up examples
    one at a time (never below its minimum). Fewer than :data:`MIN_PER_CLASS` available raises
    :class:`InputError`.
    """
    total = sum(requested.values())
    if available >= total:
        return dict(requested)
    if available < MIN_PER_CLASS:
        raise InputError(
            f"the smaller class has {available} example(s); splitting needs at least {MIN_PER_CLASS} per class "
            f"({MIN_PER_SPLIT['concept']} concept, {MIN_PER_SPLIT['operating']} operating, "
            f"{MIN_PER_SPLIT['evaluation']} evaluation) and the paper uses {sum(PAPER_PER_CLASS.values())}"
        )
    sizes = {s: max(MIN_PER_SPLIT[s], available * n // total) for s, n in requested.items()}
    while sum(sizes.values()) > available:
        s = max((s for s in sizes if sizes[s] > MIN_PER_SPLIT[s]), key=lambda s: sizes[s])
        sizes[s] -= 1
    return sizes


def default_sizes(available: int) -> dict[str, int]:
    """The default split sizes when each class has ``available`` examples: the paper's 400/200/200 when they
    fit, else the largest balanced sizes in the same proportions (:func:`split_sizes`' rule)."""
    return split_sizes(available, PAPER_PER_CLASS)


def is_default_request(requested: Sequence[int] | dict[str, int]) -> bool:
    """Whether ``requested`` (concept, operating, evaluation) is the default, the paper's sizes."""
    values = requested.values() if isinstance(requested, dict) else requested
    return [int(n) for n in values] == list(PAPER_PER_CLASS.values())


def is_fitted(requested: Sequence[int] | dict[str, int], used: Sequence[int] | dict[str, int]) -> bool:
    """The default request, answered with smaller sizes because the dataset is smaller (:func:`default_sizes`)."""
    values = used.values() if isinstance(used, dict) else used
    return is_default_request(requested) and [int(n) for n in values] != list(PAPER_PER_CLASS.values())


def split(data: ConceptData, *, n_concept: int = 400, n_operating: int = 200, n_eval: int = 200,
          seed: int = 0) -> Splits:
    """Balanced, seeded, disjoint splits with ``n_*`` examples **per class** (paper: 400/200/200).

    Each class's rows are permuted with ``numpy.random.default_rng(seed)`` and cut into concept,
    operating and evaluation parts of the same size for both classes; each split is then shuffled
    so that the classes are interleaved. When the smaller class has fewer than
    ``n_concept + n_operating + n_eval`` examples the sizes shrink proportionally
    (:func:`split_sizes`): for the default request that is the dataset's default (:attr:`Splits.fitted`),
    for any other a shrink (:attr:`Splits.shrunk`). The same data and seed always give the same splits.
    """
    requested = {"concept": n_concept, "operating": n_operating, "evaluation": n_eval}
    for s, n in requested.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < MIN_PER_SPLIT[s]:
            raise InputError(f"the {s} split needs at least {MIN_PER_SPLIT[s]} example(s) per class, got {n!r}")
    requested = {s: int(n) for s, n in requested.items()}
    n1, n0 = data.class_counts()
    available = min(n1, n0)
    try:
        sizes = split_sizes(available, requested)
    except InputError as err:
        raise InputError(f"dataset {data.name!r} cannot be split: {err} "
                         f"(it has {n1} {data.classes[0]!r} and {n0} {data.classes[1]!r})") from None
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {s: [] for s in sizes}
    for cls in (1, 0):
        order = rng.permutation(np.flatnonzero(data.labels == cls))
        start = 0
        for s, n in sizes.items():
            parts[s].append(order[start:start + n])
            start += n
    indices = {s: rng.permutation(np.concatenate(p)) for s, p in parts.items()}
    subsets = {s: data.subset(idx) for s, idx in indices.items()}
    return Splits(concept=subsets["concept"], operating=subsets["operating"], evaluation=subsets["evaluation"],
                  indices=indices, per_class=sizes, requested=requested, seed=seed, available_per_class=available)
