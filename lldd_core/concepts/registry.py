"""Every dataset usable by name: the built-ins and the ten paper tasks on the Hugging Face Hub.

The hub tasks are the binary tasks of the LLV paper (Nettasinghe & Joseph, arXiv 2603.12541); each
:class:`HubSource` says where the task lives and how its rows become ``(text, label)``: multi-field
texts (title + content, question + passage, premise + hypothesis) are joined with a newline, labels
follow the entry's ``label_rule``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..errors import InputError
from .data import Source
from .files import USER_SUFFIXES, printable


@dataclass(frozen=True)
class HubSource:
    """Where a paper task lives on the Hugging Face Hub and how its rows become ``(text, label)``.

    ``label_rule``:

    * ``"int"``: the label field is already 0/1 with 1 = the first-named class; other values
      (``-1`` for unlabelled test rows) are dropped;
    * ``"bool"``: the label field is a bool, ``True`` = 1;
    * ``"mnli"``: 0 (entailment) → 1, 2 (contradiction) → 0, 1 (neutral) dropped;
    * ``"threshold"``: a float score, ``>= 0.5`` → 1.
    """

    hub_id: str
    config: str | None
    split: str
    text_fields: tuple[str, ...]
    label_field: str
    label_rule: Literal["int", "bool", "mnli", "threshold"] = "int"
    rows: int | None = None  # rows of ``split`` as published (before any label filtering)

    def describe(self, hub_split: str | None = None) -> str:
        """``hub:<id>[/<config>]:<split>``."""
        cfg = f"/{self.config}" if self.config else ""
        return f"hub:{self.hub_id}{cfg}:{hub_split or self.split}"


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset the tool can use by name: built-in or on the Hub."""

    name: str
    source: Source
    classes: tuple[str, str]  # (label 1, label 0)
    description: str
    hub: HubSource | None = None

    @property
    def origin(self) -> str:
        """Where the rows come from: the package file or the hub id (with config and split)."""
        if self.hub is not None:
            return self.hub.describe()
        return f"lldd_core/data/{self.name}.jsonl"


def _builtin_entries() -> list[DatasetEntry]:
    from ..demo import datasets as builtin

    return [DatasetEntry(d.name, "builtin", d.classes, d.description) for d in builtin.BUILTIN.values()]


_POS_NEG = ("positive", "negative")

_HUB_ENTRIES: tuple[DatasetEntry, ...] = (
    DatasetEntry("amazon_polarity", "hub", _POS_NEG, "Amazon reviews (title + content)",
                 HubSource("fancyzhx/amazon_polarity", None, "test", ("title", "content"), "label", rows=400_000)),
    DatasetEntry("yelp_polarity", "hub", _POS_NEG, "Yelp reviews",
                 HubSource("fancyzhx/yelp_polarity", None, "test", ("text",), "label", rows=38_000)),
    DatasetEntry("sst2", "hub", _POS_NEG, "Stanford Sentiment Treebank sentences",
                 HubSource("stanfordnlp/sst2", None, "train", ("sentence",), "label", rows=67_349)),
    DatasetEntry("imdb", "hub", _POS_NEG, "IMDB movie reviews",
                 HubSource("stanfordnlp/imdb", None, "test", ("text",), "label", rows=25_000)),
    DatasetEntry("boolq", "hub", ("yes", "no"), "Yes/no questions with a passage (question + passage)",
                 HubSource("google/boolq", None, "train", ("question", "passage"), "answer", "bool", rows=9_427)),
    DatasetEntry("mnli", "hub", ("entailment", "contradiction"),
                 "MultiNLI, binarized: entailment vs contradiction, neutral dropped (premise + hypothesis)",
                 HubSource("nyu-mll/glue", "mnli", "validation_matched", ("premise", "hypothesis"), "label", "mnli",
                           rows=9_815)),
    DatasetEntry("civil_comments", "hub", ("toxic", "non-toxic"), "Civil Comments, toxicity >= 0.5",
                 HubSource("google/civil_comments", None, "validation", ("text",), "toxicity", "threshold",
                           rows=97_320)),
    DatasetEntry("tweet_eval_irony", "hub", ("irony", "not irony"), "TweetEval irony",
                 HubSource("cardiffnlp/tweet_eval", "irony", "train", ("text",), "label", rows=2_862)),
    DatasetEntry("tweet_eval_hate", "hub", ("hate", "not hate"), "TweetEval hate speech",
                 HubSource("cardiffnlp/tweet_eval", "hate", "train", ("text",), "label", rows=9_000)),
    DatasetEntry("tweet_eval_offensive", "hub", ("offensive", "not offensive"), "TweetEval offensive language",
                 HubSource("cardiffnlp/tweet_eval", "offensive", "train", ("text",), "label", rows=11_916)),
)

REGISTRY: dict[str, DatasetEntry] = {e.name: e for e in (*_builtin_entries(), *_HUB_ENTRIES)}
"""Every dataset usable by name: the four built-ins, then the ten paper tasks (default split chosen as
the smallest labelled split with enough examples for 400/200/200 per class)."""


def dataset_names() -> list[str]:
    """Names of every registered dataset (built-ins first)."""
    return list(REGISTRY)


def get_entry(name: str) -> DatasetEntry:
    """The registry entry ``name``; an unknown name raises :class:`InputError` listing the known ones
    (or, for a name that is a path, saying why it is not a dataset file)."""
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        pass
    if isinstance(name, str):
        path = Path(name).expanduser()
        try:
            exists, is_dir = path.exists(), path.is_dir()
        except (OSError, ValueError):  # a name too long for a path, or holding a NUL
            exists = is_dir = False
        if is_dir:
            raise InputError(f"{printable(name)} is a directory, not a dataset; give a CSV or JSONL file inside it "
                             f"or a dataset name")
        if exists:
            raise InputError(f"{printable(name)} is not a regular file (a device, socket or pipe); give a CSV or "
                             f"JSONL file or a dataset name")
        if os.sep in name or path.suffix.lower() in USER_SUFFIXES:
            raise InputError(f"no such file: {printable(name)} (give the path of a CSV or JSONL file, or a "
                             f"dataset name)")
    raise InputError(
        f"unknown dataset {printable(repr(name))}; choose one of: {', '.join(REGISTRY)} (or upload a CSV/JSONL file)"
    )
