"""User dataset files: CSV (or TSV / semicolon-separated), JSONL or a JSON array with ``text`` and ``label``.

:func:`load_user_file` reads one within the limits below, applies the label rule and refuses
hostile input with one line saying what to do, never quoting the file.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from ..errors import InputError
from .data import MIN_PER_CLASS, ConceptData, check_class_sizes

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
USER_SUFFIXES = (".csv", ".tsv", ".txt", ".jsonl", ".ndjson", ".json")
"""File name endings of user dataset files."""

#: Leading bytes of common non-text files, so that a wrong file is named for what it is.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"PK\x03\x04", "a zip archive (or an .xlsx/.docx file)"), (b"\x1f\x8b", "a gzip file"),
    (b"\x80\x04", "a Python pickle"), (b"\x80\x05", "a Python pickle"), (b"\xd0\xcf\x11\xe0", "an old Office file"),
    (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"), (b"\x7fELF", "a program"),
)


def printable(text: str, limit: int = 80) -> str:
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
        shown = printable(filename) if filename else "uploaded file"
        origin = f"upload:{filename or 'bytes'}"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        shown = printable(path.name)
        try:
            if path.is_dir():
                raise InputError(f"{printable(str(path))} is a directory, not a dataset; give a CSV or JSONL file")
            if not path.is_file():
                raise InputError(f"no such file: {printable(str(path))} (give the path of a CSV or JSONL file)")
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
        shown = printable(str(filename)) if filename else "uploaded file"
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
    check_class_sizes(data, where=shown)
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
                f"{where}: class {printable(cls, 40)!r} has {distinct} different text(s) in {len(rows)} rows; a class "
                f"of repeated sentences gives no concept direction (its mean is those sentences): give at least "
                f"{MIN_PER_CLASS} different texts per class"
            )


def _line(where: str) -> str:
    """``'line 12'`` (or ``'item 3'``) of a row's ``where``, without the file name."""
    return " ".join(where.rsplit(" ", 2)[-2:])
