"""Concept datasets for the LLV gain-curve analysis: registry, loaders, splits and class directions.

A *concept dataset* is a list of texts with binary labels; label 1 is the first-named class
(``classes = (label 1 name, label 0 name)``), as in :mod:`lldd_core.demo.datasets`. Three kinds:

* **built-in** (``sentiment``, ``politeness``, ``topic``, ``truth``): stored with the package,
  always available offline;
* **hub**: the ten binary tasks of the LLV paper (Nettasinghe & Joseph, arXiv 2603.12541), loaded
  with ``datasets.load_dataset(hub_id, config, split=...)`` into the local Hugging Face datasets
  cache (``$HF_DATASETS_CACHE``, default ``~/.cache/huggingface/datasets``). Offline, only a
  dataset already in that cache loads; otherwise :class:`DatasetUnavailableError` says how to get
  it. Fields as published: multi-field texts (title + content, question + passage, premise +
  hypothesis) are joined with a newline; see :data:`REGISTRY` for each task's label rule;
* **user files**: CSV (or TSV / semicolon-separated) or JSONL with columns ``text`` and ``label``,
  see :func:`load_user_file` for the label rule and the limits.

:func:`split` draws the paper's balanced, disjoint concept / operating / evaluation splits and
:func:`class_directions` the normalized class-mean differences per layer (the concept directions
``v_l``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import torch

from ..errors import InputError, NumericalError

MAX_FILE_BYTES = 50 * 1024 * 1024
"""Largest user file accepted (bytes)."""
MAX_ROWS = 200_000
"""Most rows accepted in a user file."""
MAX_TEXT_CHARS = 100_000
"""Longest text accepted in a user file (characters): prompts are sentences or paragraphs."""
MAX_LABEL_CHARS = 100
"""Longest label accepted in a user file (characters): labels are class names."""
MISSING_LABELS = frozenset({"nan", "na", "n/a", "<na>", "null", "none"})
"""Label strings (any case) that spreadsheets, pandas and JSON exports write for a missing value:
refused, so that a missing label never becomes a class."""
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


# --------------------------------------------------------------------------------------------------
# The data


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


# --------------------------------------------------------------------------------------------------
# The registry


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
            raise InputError(f"{_printable(name)} is a directory, not a dataset; give a CSV or JSONL file inside it "
                             f"or a dataset name")
        if exists:
            raise InputError(f"{_printable(name)} is not a regular file (a device, socket or pipe); give a CSV or "
                             f"JSONL file or a dataset name")
        if os.sep in name or path.suffix.lower() in USER_SUFFIXES:
            raise InputError(f"no such file: {_printable(name)} (give the path of a CSV or JSONL file, or a "
                             f"dataset name)")
    raise InputError(
        f"unknown dataset {_printable(repr(name))}; choose one of: {', '.join(REGISTRY)} (or upload a CSV/JSONL file)"
    )


def load(name: str, *, hub_split: str | None = None, max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
         seed: int = 0) -> ConceptData:
    """Load registered dataset ``name`` (built-in or hub); hub options as in :func:`load_hub`."""
    entry = get_entry(name)
    if entry.source == "builtin":
        return load_builtin(name)
    return load_hub(name, hub_split=hub_split, max_per_class=max_per_class, seed=seed)


def load_builtin(name: str) -> ConceptData:
    """A built-in dataset from the package's JSONL files (never touches the network)."""
    from ..demo import datasets as builtin

    entry = get_entry(name)
    if entry.source != "builtin":
        raise InputError(f"{name!r} is not a built-in dataset; use load({name!r})")
    rows = builtin.load(name)
    return ConceptData(
        name=name,
        source=f"builtin:{name}",
        texts=tuple(r["text"] for r in rows),
        labels=np.array([int(r["label"]) for r in rows], dtype=np.int64),
        classes=entry.classes,
    )


# --------------------------------------------------------------------------------------------------
# Hub datasets


def hub_cache_dir() -> Path:
    """The Hugging Face datasets cache, resolved now as ``datasets`` does (``$HF_DATASETS_CACHE``,
    else ``$HF_HOME/datasets``, else ``$XDG_CACHE_HOME/huggingface/datasets``, else ``~/.cache/...``)."""
    explicit = os.environ.get("HF_DATASETS_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "datasets"


def _snake(name: str) -> str:
    # datasets.naming.camelcase_to_snakecase, used for cache directory names
    name = re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", name)
    return re.sub(r"([a-z\d])([A-Z])", r"\1_\2", name).lower()


def cached_split_rows(hub: HubSource, hub_split: str | None = None, cache_dir: Path | None = None) -> int | None:
    """Rows of ``hub_split`` in the local datasets cache, or ``None`` if it is not cached.

    Reads only ``dataset_info.json`` files under ``<cache>/<namespace>___<name>/<config>/`` (any
    config directory when the entry has no config: a repository's single config may be named
    ``default``, ``plain_text`` or after the dataset), the layout ``datasets`` itself uses offline;
    no network.
    """
    split_name = hub_split or hub.split
    parts = hub.hub_id.split("/")
    parts[-1] = _snake(parts[-1])
    root = (cache_dir or hub_cache_dir()) / "___".join(parts)
    best: tuple[float, int] | None = None
    for info_path in root.glob(f"{hub.config or '*'}/*/*/dataset_info.json"):
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
            rows = int(info["splits"][split_name]["num_examples"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        mtime = info_path.stat().st_mtime
        if best is None or mtime > best[0]:
            best = (mtime, rows)
    return None if best is None else best[1]


def _unavailable(entry: DatasetEntry, hub: HubSource, hub_split: str, cache: Path, why: str) -> DatasetUnavailableError:
    cfg = f", {hub.config!r}" if hub.config else ""
    return DatasetUnavailableError(
        f"dataset {entry.name!r} ({hub.hub_id}{cfg}, split {hub_split!r}) is not available offline: {why}. "
        f"Run once with network access (unset HF_HUB_OFFLINE / HF_DATASETS_OFFLINE) to download it into the "
        f"cache, e.g. python -c \"import datasets; datasets.load_dataset('{hub.hub_id}'{cfg}, split='{hub_split}')\", "
        f"or point HF_DATASETS_CACHE at a directory holding a copy of that cache (now: {cache})"
    )


def _hub_labels(values: np.ndarray, rule: str) -> tuple[np.ndarray, np.ndarray]:
    """(keep mask, 0/1 labels) for the raw label column ``values`` under ``rule``; nulls are dropped."""
    if values.dtype == object:
        v = np.array([np.nan if x is None else float(x) for x in values], dtype=np.float64)
    else:
        v = values.astype(np.float64)
    if rule == "int":
        return (v == 0) | (v == 1), (v == 1).astype(np.int64)
    if rule == "bool":
        return np.isfinite(v), (v == 1).astype(np.int64)
    if rule == "mnli":
        return (v == 0) | (v == 2), (v == 0).astype(np.int64)
    if rule == "threshold":
        return np.isfinite(v), (v >= 0.5).astype(np.int64)
    raise ValueError(f"unknown label rule {rule!r}")


def load_hub(name: str, *, hub_split: str | None = None, max_per_class: int | None = DEFAULT_MAX_PER_CLASS,
             seed: int = 0) -> ConceptData:
    """Load paper task ``name`` with ``datasets.load_dataset(hub_id, config, split=...)``.

    The first load downloads the whole dataset config into the local datasets cache (``datasets``
    prepares every split); later loads, and offline loads, read that cache. ``hub_split``
    overrides the entry's default split. Labels follow the entry's rule (rows it drops, like MNLI's
    neutral, are removed); then at most ``max_per_class`` rows per class are kept, chosen with
    ``seed`` (``None`` keeps all), in dataset order; rows whose joined text is empty are dropped.

    Raises :class:`DatasetUnavailableError` when the dataset is not cached and the Hub cannot be
    reached (or does not have it), and :class:`InputError` when the cached copy lacks a field or
    has fewer than :data:`MIN_PER_CLASS` examples of a class.
    """
    entry = get_entry(name)
    if entry.hub is None:
        raise InputError(f"{name!r} is a built-in dataset, not a hub dataset; use load({name!r})")
    if max_per_class is not None and max_per_class < MIN_PER_CLASS:
        raise InputError(f"max_per_class must be at least {MIN_PER_CLASS} (got {max_per_class})")
    hub = entry.hub
    split_name = hub_split or hub.split
    cache = hub_cache_dir()
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a pinned dependency
        raise InputError("loading hub datasets needs the 'datasets' package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(hub.hub_id, hub.config, split=split_name, cache_dir=str(cache))
    except ConnectionError as err:  # includes huggingface_hub's OfflineModeIsEnabled
        raise _unavailable(entry, hub, split_name, cache, f"it is not in the local cache and the Hub cannot be "
                                                          f"reached ({err})") from None
    except FileNotFoundError as err:  # DatasetNotFoundError, LocalEntryNotFoundError, "not cached"
        raise _unavailable(entry, hub, split_name, cache, f"it is not in the local cache and could not be found on "
                                                          f"the Hub ({err})") from None
    except ValueError as err:
        msg = str(err)
        if msg.startswith("Couldn't find cache"):  # offline, another config of the same repo cached
            raise _unavailable(entry, hub, split_name, cache, msg.replace("\n", "; ")) from None
        if msg.startswith("Unknown split"):
            raise InputError(f"dataset {name!r} has no split {split_name!r}: {msg}") from None
        raise
    except OSError as err:  # HTTP errors of huggingface_hub / requests
        raise _unavailable(entry, hub, split_name, cache, f"the Hub could not be reached ({err})") from None

    needed = {*hub.text_fields, hub.label_field}
    missing = sorted(needed - set(ds.column_names))
    if missing:
        raise InputError(
            f"the copy of {hub.hub_id} in {cache} lacks field(s) {', '.join(missing)} "
            f"(found: {', '.join(ds.column_names)}); delete it from the cache and load it again with network access"
        )
    raw = np.asarray(ds.with_format("arrow")[hub.label_field].to_numpy(zero_copy_only=False))
    keep, labels = _hub_labels(raw, hub.label_rule)
    rng = np.random.default_rng(seed)
    chosen: list[np.ndarray] = []
    for cls in (1, 0):
        idx = np.flatnonzero(keep & (labels == cls))
        if max_per_class is not None and idx.size > max_per_class:
            idx = np.sort(rng.choice(idx, size=max_per_class, replace=False))
        chosen.append(idx)
    rows = np.sort(np.concatenate(chosen))
    sub = ds.select(rows.tolist()).with_format("arrow")
    columns = [sub[f].to_pylist() for f in hub.text_fields]
    texts: list[str] = []
    kept: list[int] = []
    for j, values in enumerate(zip(*columns)):
        text = "\n".join(str(v).strip() for v in values if v is not None and str(v).strip())
        if text:
            texts.append(text)
            kept.append(int(labels[rows[j]]))
    data = ConceptData(name=name, source=hub.describe(split_name), texts=tuple(texts),
                       labels=np.array(kept, dtype=np.int64), classes=entry.classes)
    _check_class_sizes(data, where=f"dataset {name!r} ({hub.describe(split_name)})")
    return data


# --------------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class DatasetListing:
    """One row of ``python -m lldd_core datasets``.

    ``size``: rows of the (default) split: counted for built-ins, read from the local cache for a
    cached hub dataset, else as published (``None`` if unknown). ``available_offline``: built-ins
    always; hub datasets when their split is in the local datasets cache.
    """

    name: str
    source: Source
    origin: str
    classes: tuple[str, str]
    size: int | None
    available_offline: bool
    description: str

    def as_dict(self) -> dict[str, Any]:
        """JSON-able form (for ``--json``)."""
        return {"name": self.name, "source": self.source, "origin": self.origin,
                "classes": {"1": self.classes[0], "0": self.classes[1]}, "size": self.size,
                "available_offline": self.available_offline, "description": self.description}


def list_datasets() -> list[DatasetListing]:
    """Every registered dataset with its classes, size and offline availability (no network)."""
    from ..demo import datasets as builtin

    out: list[DatasetListing] = []
    cache = hub_cache_dir()
    for entry in REGISTRY.values():
        if entry.hub is None:
            try:
                with builtin.path_of(entry.name).open(encoding="utf-8") as fh:
                    size: int | None = sum(1 for line in fh if line.strip())
            except OSError:
                size = None
            available = True
        else:
            cached = cached_split_rows(entry.hub, cache_dir=cache)
            available = cached is not None
            size = cached if cached is not None else entry.hub.rows
        out.append(DatasetListing(entry.name, entry.source, entry.origin, entry.classes, size, available,
                                  entry.description))
    return out


def format_listing(rows: Sequence[DatasetListing] | None = None) -> str:
    """A plain-text table of :func:`list_datasets` (one line per dataset, a header first)."""
    rows = list_datasets() if rows is None else rows
    table = [("name", "source", "classes (1 / 0)", "size", "offline", "origin")]
    for r in rows:
        table.append((r.name, r.source, f"{r.classes[0]} / {r.classes[1]}",
                      "?" if r.size is None else f"{r.size:,}", "yes" if r.available_offline else "no", r.origin))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in table)


# --------------------------------------------------------------------------------------------------
# User files

USER_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json")
"""File name endings of user dataset files."""

#: Leading bytes of common non-text files, so that a wrong file is named for what it is.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive (or an .xlsx/.docx file)"), (b"\x1f\x8b", "a gzip file"),
    (b"\x80\x04", "a Python pickle"), (b"\x80\x05", "a Python pickle"), (b"\xd0\xcf\x11\xe0", "an old Office file"),
    (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"), (b"\x7fELF", "a program"),
)


def _printable(text: str, limit: int = 80) -> str:
    """``text`` for one line of an error message: control characters escaped, at most ``limit`` characters."""
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return shown if len(shown) <= limit else shown[:limit - 1] + "…"


def _not_text(blob: bytes, shown: str, err: UnicodeDecodeError | None) -> InputError:
    """Why ``blob`` is not a dataset text file, without quoting any of it."""
    kind = next((what for magic, what in _SIGNATURES if blob.startswith(magic)), None)
    if kind == "UTF-16 text":
        return InputError(f"{shown} is UTF-16 text; save it as UTF-8 CSV or JSONL")
    if kind is not None:
        return InputError(f"{shown} is {kind}, not a CSV or JSONL file; export the data as UTF-8 CSV or JSONL "
                          f"with columns text and label")
    if err is None:
        return InputError(f"{shown} contains NUL bytes, so it is a binary file, not CSV or JSONL text; export the "
                          f"data as UTF-8 CSV or JSONL with columns text and label")
    return InputError(f"{shown} is not UTF-8 text (byte {err.start}); save it as UTF-8 CSV or JSONL")


def _read_source(source: bytes | str | os.PathLike | BinaryIO,
                 filename: str | None) -> tuple[bytes, str | None, str, str]:
    """(content, file name, display name, ConceptData.source) with the size cap applied before reading."""
    cap = f"at most {MAX_FILE_BYTES // (1024 * 1024)} MB"
    if isinstance(source, (bytes, bytearray, memoryview)):
        blob = bytes(source)
        shown = _printable(filename) if filename else "uploaded file"
        origin = f"upload:{filename or 'bytes'}"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        shown = _printable(path.name)
        try:
            if path.is_dir():
                raise InputError(f"{_printable(str(path))} is a directory, not a dataset; give a CSV or JSONL file")
            if not path.is_file():
                raise InputError(f"no such file: {_printable(str(path))} (give the path of a CSV or JSONL file)")
            if path.stat().st_size > MAX_FILE_BYTES:
                raise InputError(f"{shown} is {path.stat().st_size / 2**20:.1f} MB; files must be {cap} "
                                 f"(keep a sample of the rows)")
            with path.open("rb") as fh:  # the cap again: a file may grow, or report size 0 (/proc)
                blob = fh.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise InputError(f"cannot read {shown} ({err.strerror or type(err).__name__}); give a readable CSV or "
                             f"JSONL file") from None
        except ValueError:  # a path holding a NUL byte
            raise InputError("the dataset path holds a NUL byte; give the path of a CSV or JSONL file") from None
        filename = filename or path.name
        origin = f"file:{path}"
    elif hasattr(source, "read"):
        blob = source.read(MAX_FILE_BYTES + 1)
        filename = filename or getattr(source, "name", None)
        shown = _printable(str(filename)) if filename else "uploaded file"
        origin = f"upload:{filename or 'stream'}"
    else:
        raise InputError(f"expected file bytes or a path, got {type(source).__name__}")
    if len(blob) > MAX_FILE_BYTES:
        raise InputError(f"{shown} is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; files must be {cap} "
                         f"(keep a sample of the rows)")
    return blob, filename, shown, origin


def _too_many_rows(shown: str) -> InputError:
    return InputError(f"{shown} has more than {MAX_ROWS:,} rows; keep a sample of at most {MAX_ROWS:,} "
                      f"(the paper uses 800 per class)")


def _rows_csv(text: str, shown: str, delimiter: str | None) -> list[tuple[Any, Any, str]]:
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), "")
    candidates = [delimiter] if delimiter else [",", "\t", ";"]
    chosen, header, seen = None, [], set()
    for d in candidates:
        try:
            header = [h.strip().lower() for h in next(csv.reader([first], delimiter=d), [])]
        except csv.Error:
            header = []
        seen.update(header)
        if "text" in header and "label" in header:
            chosen = d
            break
    if chosen is None:  # say what is missing, never what the line holds (the file may not be meant to be shown)
        fields = len(next(csv.reader([first], delimiter=candidates[0]), [])) if first.strip() else 0
        missing = " or ".join(repr(c) for c in ("text", "label") if c not in seen)
        raise InputError(f"{shown} needs a header row naming columns 'text' and 'label'; its first line has {fields} "
                         f"field(s) and no {missing} column (is it a CSV file with a header row?)")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=chosen)
    rows: list[tuple[Any, Any, str]] = []
    try:
        for row in reader:  # the header: the first row that is not blank, like ``first``
            if any(c.strip() for c in row):
                break
        ti, li = header.index("text"), header.index("label")
        for row in reader:
            if not any(c.strip() for c in row):
                continue
            if len(rows) >= MAX_ROWS:
                raise _too_many_rows(shown)
            where = f"{shown} line {reader.line_num}"
            rows.append((row[ti] if ti < len(row) else None, row[li] if li < len(row) else None, where))
    except csv.Error as err:  # e.g. a field over the csv module's limit, a stray quote at the end
        if "field limit" in str(err):
            raise InputError(f"{shown} line {reader.line_num} has a field longer than {csv.field_size_limit():,} "
                             f"characters; texts must be at most {MAX_TEXT_CHARS:,}") from None
        raise InputError(f"{shown} line {reader.line_num} is not valid CSV ({err}); save it again as CSV with a "
                         f"header row text,label") from None
    return rows


def _rows_json(text: str, shown: str) -> list[tuple[Any, Any, str]]:
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array of objects is accepted too
        records = _json_value(text, shown, "write one JSON object per line (JSONL)")
        if not isinstance(records, list):
            raise InputError(f"{shown} is not a JSON array of objects; write one JSON object per line (JSONL)")
        items = [(r, f"{shown} item {i + 1}") for i, r in enumerate(records)]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{shown} line {n}"
            items.append((_json_value(line, where, 'each line must be one object like {"text": "...", "label": 1}'),
                          where))
    rows: list[tuple[Any, Any, str]] = []
    for record, where in items:
        if not isinstance(record, dict):
            raise InputError(f'{where} is not a JSON object; each row must look like {{"text": "...", "label": 1}}')
        keys = {str(k).strip().lower(): k for k in record}
        if "text" not in keys or "label" not in keys:  # name what is missing, not the keys it has
            missing = " or ".join(repr(k) for k in ("text", "label") if k not in keys)
            raise InputError(f"{where} needs the keys 'text' and 'label'; it has {len(record)} key(s) and no "
                             f"{missing}")
        if len(rows) >= MAX_ROWS:
            raise _too_many_rows(shown)
        rows.append((record[keys["text"]], record[keys["label"]], where))
    return rows


def _json_value(text: str, where: str, hint: str) -> Any:
    """``json.loads(text)`` with every way it can fail on hostile input as an :class:`InputError`."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise InputError(f"{where} is not valid JSON ({err.msg} at character {err.pos}); {hint}") from None
    except RecursionError:
        raise InputError(f"{where} nests JSON arrays or objects too deeply to read; {hint}") from None
    except ValueError:  # an integer literal over Python's digit limit
        raise InputError(f"{where} holds a number too long to read; {hint}") from None


_INT_RE = re.compile(r"[+-]?\d+")


def _label_key(value: Any, where: str) -> tuple[int | float | str, str]:
    """Normalize one label: (comparison key, display name). Bools and 'true'/'false' become 1/0,
    integral numbers (also as strings, like '1' or '1.0') become ints, other strings stay strings."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{where} has no label; every row needs one of two label values")
    if isinstance(value, (bool, np.bool_)):
        return int(value), "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return int(value), str(int(value))
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise InputError(f"{where} has label {value}; labels must be two finite numbers or two strings")
        return (int(value), str(int(value))) if float(value).is_integer() else (float(value), repr(float(value)))
    if isinstance(value, str):
        s = value.strip()
        if len(s) > MAX_LABEL_CHARS:
            raise InputError(f"{where} has a label of {len(s):,} characters; labels are class names of at most "
                             f"{MAX_LABEL_CHARS} (is the label column the right one?)")
        if not s.isprintable():
            raise InputError(f"{where} has a label with a line break or control character; labels are class names "
                             f"on one line")
        if s.lower() in MISSING_LABELS:
            raise InputError(f"{where} has label {s!r}, which marks a missing value; give every row one of the two "
                             f"labels, or remove the rows without one")
        if s.lower() in ("true", "false"):
            return int(s.lower() == "true"), s.lower()
        if _INT_RE.fullmatch(s):
            return int(s), str(int(s))
        try:
            f = float(s)
        except ValueError:
            return s, s
        if math.isfinite(f):
            return _label_key(f, where)
        raise InputError(f"{where} has label {s!r}, which is not a finite number; labels must be two finite numbers "
                         f"or two class names")
    raise InputError(f"{where} has a label of type {type(value).__name__}; use numbers (0/1), true/false or "
                     f"two class names")


def load_user_file(
    source: bytes | str | os.PathLike | BinaryIO,
    *,
    filename: str | None = None,
    name: str | None = None,
    file_format: Literal["csv", "jsonl"] | None = None,
    positive: Any = None,
    class_names: tuple[str, str] | None = None,
) -> ConceptData:
    """A concept dataset from a CSV or JSONL file (``bytes`` of an upload, an open binary file, or a path).

    Format: from ``file_format``, else the file name (``.csv``, ``.tsv``, ``.jsonl``, ``.ndjson``,
    ``.json``), else the content (a first ``{`` or ``[`` means JSON). CSV needs a header row with
    columns ``text`` and ``label`` (any case, other columns ignored; comma, tab or semicolon
    separated); JSONL one object per line with keys ``text`` and ``label`` (a JSON array of such
    objects works too). UTF-8, at most :data:`MAX_FILE_BYTES` bytes and :data:`MAX_ROWS` rows.

    Label rule: labels must take exactly two distinct values. Bools and ``true``/``false`` count
    as 1/0, integral numbers (``1``, ``"1"``, ``1.0``) as ints. The two values are sorted
    (numerically if both are numbers, else as strings) and the **larger** becomes label 1, so
    0/1, false/true, -1/1 and ``negative``/``positive`` keep their usual meaning; ``positive``
    names the value that should be label 1 instead. Class names are the values as written (bools
    as ``true``/``false``) unless ``class_names`` = (label 1 name, label 0 name) is given. Each
    class needs at least :data:`MIN_PER_CLASS` examples; texts must be non-empty.

    Refused, each with one line saying what to do and never quoting the file: a missing-value
    label (empty, null, or a string in :data:`MISSING_LABELS` such as ``nan``: a missing label never
    becomes a class), a non-finite one (``inf``), a label over :data:`MAX_LABEL_CHARS` characters or
    with a line break; a text over :data:`MAX_TEXT_CHARS` characters or with an unpaired surrogate; a
    text that carries both labels (up to whitespace); a class with fewer than :data:`MIN_PER_CLASS`
    *different* texts (the mean of one repeated sentence is no concept direction; repeats are
    otherwise kept); JSON nested too deeply to read; binary files (named by their signature: image,
    archive, pickle, UTF-16 text) and non-UTF-8 text; paths that are directories, pipes or unreadable.
    """
    blob, filename, shown, origin = _read_source(source, filename)
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise _not_text(blob, shown, err) from None
    if "\x00" in text:
        raise _not_text(blob, shown, None)
    suffix = Path(filename or "").suffix.lower()
    if file_format is None:
        if suffix in (".csv", ".tsv", ".txt"):
            file_format = "csv"
        elif suffix in (".jsonl", ".ndjson", ".json"):
            file_format = "jsonl"
        else:
            file_format = "jsonl" if text.lstrip()[:1] in ("{", "[") else "csv"
    if file_format not in ("csv", "jsonl"):
        raise InputError(f"file_format must be 'csv' or 'jsonl', not {file_format!r}")
    if not text.strip():
        raise InputError(f"{shown} is empty; it needs rows with a text and a label")
    rows = _rows_csv(text, shown, "\t" if suffix == ".tsv" else None) if file_format == "csv" \
        else _rows_json(text, shown)
    if not rows:
        raise InputError(f"{shown} has no data rows; it needs rows with a text and a label")

    texts: list[str] = []
    keys: list[int | float | str] = []
    wheres: list[str] = []
    display: dict[int | float | str, str] = {}
    for raw_text, raw_label, where in rows:
        _check_text(raw_text, where)
        key, shown_label = _label_key(raw_label, where)
        texts.append(raw_text)
        keys.append(key)
        wheres.append(where)
        display.setdefault(key, shown_label)

    distinct = list(display)
    if len(distinct) == 1:
        raise InputError(f"{shown}: every row has label {display[distinct[0]]!r}; a concept dataset needs two "
                         f"classes (add examples of the other class)")
    if len(distinct) > 2:
        listed = ", ".join(repr(display[k]) for k in distinct[:10]) + (", ..." if len(distinct) > 10 else "")
        raise InputError(f"{shown}: labels must take exactly two values, found {len(distinct)}: {listed}; "
                         f"map them to two classes first")
    if all(isinstance(k, (int, float)) for k in distinct):
        low, high = sorted(distinct)  # type: ignore[type-var]
    else:
        low, high = sorted(distinct, key=str)
    if positive is not None:
        pos_key, _ = _label_key(positive, "positive")
        if pos_key not in distinct:
            raise InputError(f"positive={positive!r} is not one of the labels in {shown}: "
                             f"{display[low]!r}, {display[high]!r}")
        high, low = pos_key, (low if pos_key == high else high)
    if class_names is not None:
        if len(class_names) != 2 or not all(isinstance(c, str) and c.strip() for c in class_names):
            raise InputError("class_names must be two non-empty names: (label 1 name, label 0 name)")
        classes = (class_names[0], class_names[1])
    else:
        classes = (display[high], display[low])
    data = ConceptData(
        name=name or (Path(filename).stem if filename else "user"),
        source=origin,
        texts=tuple(texts),
        labels=np.array([int(k == high) for k in keys], dtype=np.int64),
        classes=classes,
    )
    _check_class_sizes(data, where=shown)
    _check_distinct(data, wheres, where=shown)
    return data


def _check_text(value: Any, where: str) -> None:
    """One row's text: a non-empty string of valid Unicode, at most :data:`MAX_TEXT_CHARS` characters."""
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{where} has an empty or non-text 'text'; every row needs a non-empty text")
    if len(value) > MAX_TEXT_CHARS:
        raise InputError(f"{where} has a text of {len(value):,} characters; texts must be at most {MAX_TEXT_CHARS:,} "
                         f"(prompts are sentences or paragraphs)")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON \ud800 escape: no tokenizer can take it
        raise InputError(f"{where} has a text with an unpaired \\u surrogate escape; write the characters "
                         f"themselves (UTF-8)") from None


def _normal(text: str) -> str:
    return " ".join(text.split())


def _check_distinct(data: ConceptData, wheres: Sequence[str], where: str) -> None:
    """Rule: no text (up to whitespace) may carry both labels, and each class needs :data:`MIN_PER_CLASS`
    different texts: a class of one repeated sentence has a mean that is that sentence, no concept."""
    first: dict[str, tuple[int, int]] = {}
    clashes: list[tuple[int, int]] = []
    for i, (text, label) in enumerate(zip(data.texts, data.labels.tolist())):
        key = _normal(text)
        seen = first.setdefault(key, (i, label))
        if seen[1] != label:
            clashes.append((seen[0], i))
            first[key] = (seen[0], -1)  # count each text once
    if clashes:
        a, b = clashes[0]
        raise InputError(f"{where}: {len(clashes)} text(s) carry both labels (the first at {_line(wheres[a])} and "
                         f"{_line(wheres[b])}); give each text one label: remove or relabel the duplicates")
    for cls, value in zip(data.classes, (1, 0)):
        rows = [t for t, y in zip(data.texts, data.labels.tolist()) if y == value]
        distinct = len({_normal(t) for t in rows})
        if distinct < MIN_PER_CLASS:
            raise InputError(
                f"{where}: class {_printable(cls, 40)!r} has {distinct} different text(s) in {len(rows)} rows; a class "
                f"of repeated sentences gives no concept direction (its mean is those sentences): give at least "
                f"{MIN_PER_CLASS} different texts per class"
            )


def _line(where: str) -> str:
    """``'line 12'`` (or ``'item 3'``) of a row's ``where``, without the file name."""
    return " ".join(where.rsplit(" ", 2)[-2:])


def _check_class_sizes(data: ConceptData, where: str) -> None:
    for cls, count in zip(data.classes, data.class_counts()):
        if count < MIN_PER_CLASS:
            raise InputError(
                f"{where} has {count} example(s) of class {cls!r}; each class needs at least {MIN_PER_CLASS} "
                f"({MIN_PER_SPLIT['concept']} concept, {MIN_PER_SPLIT['operating']} operating, "
                f"{MIN_PER_SPLIT['evaluation']} evaluation), and the paper uses "
                f"{sum(PAPER_PER_CLASS.values())} per class"
            )


# --------------------------------------------------------------------------------------------------
# Splits


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


# --------------------------------------------------------------------------------------------------
# Directions


def class_directions(states: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor | Sequence[int], *,
                     allow_zero: bool = False) -> np.ndarray | torch.Tensor:
    r"""Concept directions: per layer, the unit vector of the class-mean difference.

    With ``x_{i,l}`` the state of example ``i`` at layer ``l`` (``states[i, l]``, shape
    ``[N, n_layers+1, d]``) and ``y_i ∈ {0, 1}``::

        μ_{c,l} = (1/N_c) Σ_{i: y_i = c} x_{i,l}
        v_l     = (μ_{1,l} − μ_{0,l}) / ‖μ_{1,l} − μ_{0,l}‖₂

    so ``v_l`` points from class 0 towards class 1 (label 1 = the first-named class). Means are
    accumulated in float64; the result has the input's type (numpy or torch, same device) and
    floating dtype (float64 for integer input), shape ``[n_layers+1, d]``.

    A layer where the two means coincide (``‖μ_1 − μ_0‖ ≤ 1e-12 · max(‖μ_1‖, ‖μ_0‖)``) has no
    direction: that raises :class:`NumericalError` naming the layers, unless ``allow_zero``, which
    returns a zero row there (this happens at layer 0 when every text ends with the same token and
    the model adds no position embedding to the stream). Non-finite states raise
    :class:`NumericalError`; bad shapes or labels raise :class:`InputError`.
    """
    is_torch = isinstance(states, torch.Tensor)
    if is_torch:
        out_dtype = states.dtype if states.is_floating_point() else torch.float64
        x = states.detach().to(torch.float64)
    else:
        arr = np.asarray(states)
        out_np_dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float64
        x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if x.ndim != 3:
        raise InputError(f"states must have shape [N, n_layers+1, d], got {tuple(x.shape)}")
    y = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise InputError(f"labels must have one entry per example ({x.shape[0]}), got shape {y.shape}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise InputError("labels must be 0 or 1 (1 = the first-named class)")
    n1 = int((y == 1).sum())
    if n1 == 0 or n1 == y.shape[0]:
        raise InputError(f"class directions need examples of both classes; got {n1} with label 1 and "
                         f"{y.shape[0] - n1} with label 0")
    if not torch.isfinite(x).all():
        raise NumericalError("the states contain NaN or Inf (try float32 or float64 instead of half precision)")
    mask = torch.from_numpy(y == 1).to(x.device)
    mu1 = x[mask].mean(dim=0)
    mu0 = x[~mask].mean(dim=0)
    diff = mu1 - mu0
    norms = diff.norm(dim=-1)
    scale = torch.maximum(mu1.norm(dim=-1), mu0.norm(dim=-1))
    zero = norms <= 1e-12 * scale.clamp_min(torch.finfo(torch.float64).tiny)
    if bool(zero.any()) and not allow_zero:
        layers = zero.nonzero().flatten().tolist()
        raise NumericalError(
            f"the two class means are identical at layer(s) {layers[:20]}, so there is no concept direction "
            f"there (e.g. every text ends with the same token and layer 0 holds only its embedding); "
            f"use other layers, or allow_zero=True to get zero vectors for them"
        )
    v = torch.where(zero[:, None], torch.zeros_like(diff), diff / norms.clamp_min(1e-300)[:, None])
    if is_torch:
        return v.to(out_dtype)
    return v.numpy().astype(out_np_dtype, copy=False)
