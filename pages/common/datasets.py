"""A concept-dataset picker shared by the pages: a registered dataset by name, or an uploaded file.

UI only. Returns what the service's concept analyses accept: a registry name (built-in or hub, see
:func:`lldd_core.concepts.catalog.list_datasets`) or loaded :class:`~lldd_core.concepts.data.ConceptData` from
an upload. Hub datasets that are not in the local cache are listed too; using one offline makes the
service raise :class:`~lldd_core.concepts.data.DatasetUnavailableError`, which the page shows as
``st.error`` (via ``run_with_status``).
"""

from __future__ import annotations

import streamlit as st

from lldd_core.concepts.catalog import DatasetListing, list_datasets
from lldd_core.concepts.data import MIN_PER_CLASS, ConceptData
from lldd_core.concepts.files import MAX_FILE_BYTES, load_user_file
from lldd_core.errors import LLDDError
from pages.common.link import fields

#: The two ways of choosing a dataset (the radio's options).
REGISTRY = "Registered dataset"
UPLOAD = "Upload CSV / JSONL"
SOURCES: tuple[str, ...] = (REGISTRY, UPLOAD)
DEFAULT_DATASET = "sentiment"
UPLOAD_TYPES = ["csv", "tsv", "txt", "jsonl", "ndjson", "json"]

FORMAT_HELP = (
    "CSV (comma, tab or semicolon separated) with a header row naming columns `text` and `label`, or JSONL with one "
    "object `{\"text\": ..., \"label\": ...}` per line. UTF-8, at most "
    f"{MAX_FILE_BYTES // 2**20} MB. Labels take exactly two values (0/1, true/false or two class names); the "
    f"larger one (1, true, or the later name alphabetically) is class 1. Each class needs at least {MIN_PER_CLASS} "
    "examples; the paper uses 800 per class (400 concept, 200 operating, 200 evaluation)."
)


def listing_label(row: DatasetListing) -> str:
    """How the picker shows a registered dataset: name, classes, size and where it comes from."""
    size = "" if row.size is None else f", {row.size:,} rows"
    if row.source == "builtin":
        where = "built-in"
    else:
        where = "hub, cached" if row.available_offline else "hub, not downloaded"
    return f"{row.name} ({row.classes[0]} / {row.classes[1]}{size}; {where})"


def describe_data(data: ConceptData) -> str:
    """One caption line about loaded data: name, source, class counts."""
    n1, n0 = data.class_counts()
    return (f"`{data.name}` ({data.source}): {len(data):,} rows, {n1:,} {data.classes[0]!r} (class 1) / "
            f"{n0:,} {data.classes[1]!r} (class 0)")


def _registered(key: str) -> str:
    rows = {r.name: r for r in list_datasets()}  # cheap: reads cache metadata only
    names = list(rows)
    chosen = st.selectbox(
        "Concept dataset", names, index=names.index(DEFAULT_DATASET) if DEFAULT_DATASET in names else 0,
        format_func=lambda n: listing_label(rows[n]) if n in rows else n, key=f"{key}_name",
        help="Built-in datasets ship with lldd (always available). Hub datasets are the LLV paper's ten tasks; "
        "one that is not downloaded needs network access once.",
    )
    row = rows[chosen]
    note = f"{row.description}. Source: `{row.origin}`."
    if row.source == "hub" and not row.available_offline:
        note += " Not in the local datasets cache: the first computation downloads it (needs the network)."
    st.caption(note)
    return chosen


def _uploaded(key: str) -> ConceptData | None:
    upload = st.file_uploader("Concept file (CSV or JSONL)", type=UPLOAD_TYPES, key=f"{key}_file", help=FORMAT_HELP)
    if upload is None:
        st.info("Upload a CSV or JSONL file with columns `text` and `label`. " + FORMAT_HELP, icon=":material/upload:")
        return None
    memo_key = f"{key}.parsed"
    memo = st.session_state.get(memo_key)
    if not (isinstance(memo, tuple) and memo[0] == upload.file_id):  # parse each upload once
        try:
            memo = (upload.file_id, load_user_file(upload.getvalue(), filename=upload.name))
        except LLDDError as err:
            memo = (upload.file_id, str(err))
        st.session_state[memo_key] = memo
    parsed = memo[1]
    if isinstance(parsed, str):
        st.error(parsed)
        return None
    st.caption(describe_data(parsed))
    return parsed


def dataset_picker(key: str = "ds") -> str | ConceptData | None:
    """Draw the picker; returns a registry name, the uploaded file's data, or ``None`` (nothing usable yet:
    no file, or one with errors, which are shown with ``st.error``)."""
    fields(f"{key}_source", f"{key}_name")  # an upload is not linkable: the link opens the registry choice
    source = st.radio("Dataset source", SOURCES, horizontal=True, key=f"{key}_source", label_visibility="collapsed")
    return _uploaded(key) if source == UPLOAD else _registered(key)
