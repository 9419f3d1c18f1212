"""The paper's balanced, disjoint concept / operating / evaluation splits of a concept dataset."""

from __future__ import annotations

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
    def shrunk(self) -> bool:
        """Whether the sizes were reduced because the dataset was too small."""
        return self.per_class != self.requested

    def describe(self) -> str:
        """One line for the UI: the sizes, and why they are smaller than asked if they are."""
        sizes = "/".join(str(self.per_class[s]) for s in MIN_PER_SPLIT)
        line = f"{sizes} per class (concept/operating/evaluation)"
        if self.shrunk:
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


def split(data: ConceptData, *, n_concept: int = 400, n_operating: int = 200, n_eval: int = 200,
          seed: int = 0) -> Splits:
    """Balanced, seeded, disjoint splits with ``n_*`` examples **per class** (paper: 400/200/200).

    Each class's rows are permuted with ``numpy.random.default_rng(seed)`` and cut into concept,
    operating and evaluation parts of the same size for both classes; each split is then shuffled
    so that the classes are interleaved. When the smaller class has fewer than
    ``n_concept + n_operating + n_eval`` examples the sizes shrink proportionally
    (:func:`split_sizes`). The same data and seed always give the same splits.
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
