"""Hub datasets: the paper tasks loaded with ``datasets.load_dataset`` into the local datasets cache.

The cache is ``$HF_DATASETS_CACHE`` (default ``~/.cache/huggingface/datasets``). Offline, only a
dataset already in that cache loads; otherwise :class:`~.data.DatasetUnavailableError` says how to
get it. :func:`cached_split_rows` reads the cache's own metadata files, never the network.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import InputError
from .data import DEFAULT_MAX_PER_CLASS, MIN_PER_CLASS, ConceptData, DatasetUnavailableError, check_class_sizes
from .registry import DatasetEntry, HubSource, get_entry


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
    check_class_sizes(data, where=f"dataset {name!r} ({hub.describe(split_name)})")
    return data
