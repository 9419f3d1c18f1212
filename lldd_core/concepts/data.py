"""What a concept dataset is: texts with binary labels, and the size rules every source obeys.

Label 1 is the first-named class (``classes = (label 1 name, label 0 name)``), as in
:mod:`lldd_core.demo.datasets`. Built-in, hub and user-file datasets (:mod:`.catalog`, :mod:`.hub`,
:mod:`.files`) all become a :class:`ConceptData` and must hold :data:`MIN_PER_CLASS` examples per
class, enough for the splits of :mod:`.splits`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ..errors import InputError

MIN_PER_SPLIT: dict[str, int] = {"concept": 2, "operating": 1, "evaluation": 1}
"""Fewest examples per class in each split (a class mean needs 2 for a direction to mean much)."""
MIN_PER_CLASS = sum(MIN_PER_SPLIT.values())
"""Fewest examples per class a dataset must have to be split at all."""
PAPER_PER_CLASS: dict[str, int] = {"concept": 400, "operating": 200, "evaluation": 200}
"""The paper's split sizes per class."""
DEFAULT_MAX_PER_CLASS = 5000
"""Hub datasets are subsampled (seeded) to at most this many examples per class when loaded."""

Source = Literal["builtin", "hub"]


class DatasetUnavailableError(InputError):
    """A hub dataset could not be loaded: not in the local cache and the Hub not reachable, or not found."""


@dataclass(frozen=True, eq=False)
class ConceptData:
    """Texts with binary labels.

    ``labels`` is an int64 array of 0/1 with one entry per text; ``classes`` names label 1 first,
    then label 0. ``source`` says where the data came from (``builtin:<name>``,
    ``hub:<id>[/<config>]:<split>``, ``file:<path>`` or ``upload:<filename>``).
    """

    name: str
    source: str
    texts: tuple[str, ...]
    labels: np.ndarray
    classes: tuple[str, str]

    def __post_init__(self) -> None:
        texts = tuple(self.texts)
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or labels.shape[0] != len(texts):
            raise ValueError(f"labels must be 1-D with one entry per text ({len(texts)}), got shape {labels.shape}")
        if labels.size and not np.isin(labels, (0, 1)).all():
            raise ValueError("labels must be 0 or 1")
        labels = labels.astype(np.int64, copy=True)
        labels.flags.writeable = False
        if len(self.classes) != 2:
            raise ValueError("classes must name exactly two classes (label 1, label 0)")
        object.__setattr__(self, "texts", texts)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "classes", (str(self.classes[0]), str(self.classes[1])))

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> tuple[int, int]:
        """Number of examples with label 1 and with label 0."""
        n1 = int(self.labels.sum())
        return n1, len(self) - n1

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ConceptData:
        """The rows ``indices`` (in that order) as a new :class:`ConceptData`."""
        idx = np.asarray(indices, dtype=np.int64)
        return ConceptData(
            name=name or self.name,
            source=self.source,
            texts=tuple(self.texts[i] for i in idx),
            labels=self.labels[idx],
            classes=self.classes,
        )

    def fingerprint(self) -> str:
        """sha256 of the classes, texts and labels (a cache key part; independent of name and source)."""
        h = hashlib.sha256()
        h.update(json.dumps(self.classes).encode())
        for text, label in zip(self.texts, self.labels.tolist()):
            h.update(f"{label}\x1f{len(text)}\x1f".encode())
            h.update(text.encode("utf-8", "surrogatepass"))
        return h.hexdigest()



def check_class_sizes(data: ConceptData, where: str) -> None:
    for cls, count in zip(data.classes, data.class_counts()):
        if count < MIN_PER_CLASS:
            raise InputError(
                f"{where} has {count} example(s) of class {cls!r}; each class needs at least {MIN_PER_CLASS} "
                f"({MIN_PER_SPLIT['concept']} concept, {MIN_PER_SPLIT['operating']} operating, "
                f"{MIN_PER_SPLIT['evaluation']} evaluation), and the paper uses "
                f"{sum(PAPER_PER_CLASS.values())} per class"
            )
