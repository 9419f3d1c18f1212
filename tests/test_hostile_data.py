"""Hostile concept datasets: each is refused with one line saying what to do, never a traceback or its content.

Every input goes through the CLI (``gains --dataset FILE``: exit 2, one ``error:`` line, a result cached
before it still a hit with identical numbers) and through the core loader (:class:`InputError`); one
through the Gain curves page (one ``st.error``). Files whose first line used to be echoed carry
:data:`SECRET`, which no message may show.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from lldd_core.concepts.catalog import load
from lldd_core.concepts.files import load_user_file
from lldd_core.errors import InputError
from tests.hostile import assert_one_line_error, refuse

SECRET = "SECRET-7f3a-do-not-print"
DEEP = 100_000


def good_rows(n: int = 4) -> list[tuple[str, int]]:
    """``n`` distinct texts per class, enough to split."""
    return [(f"review {i} was {'good' if i % 2 else 'bad'}", i % 2) for i in range(2 * n)]


def csv_bytes(rows: list[tuple[str, object]], header: str = "text,label") -> bytes:
    return (header + "\n" + "".join(f"{t},{y}\n" for t, y in rows)).encode()


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "\n".join(json.dumps(r) for r in rows).encode() + b"\n"


def good_jsonl() -> list[dict]:
    return [{"text": t, "label": y} for t, y in good_rows()]


def write(name: str, blob: bytes) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        path = tmp / name
        path.write_bytes(blob)
        return str(path)
    return build


def make_dir(tmp: Path) -> str:
    (tmp / "a_dataset").mkdir()
    (tmp / "a_dataset" / "data.csv").write_bytes(csv_bytes(good_rows()))
    return str(tmp / "a_dataset")


def make_fifo(tmp: Path) -> str:
    path = tmp / "pipe.csv"
    os.mkfifo(path)  # opening it would block: it must be refused without being read
    return str(path)


def make_zip(tmp: Path) -> str:
    path = tmp / "data.csv"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.csv", csv_bytes(good_rows()))
    return str(path)


PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x06\x00\x00\x00\x1f\x15\xc4\x89"
LONG_DIGITS = "7" * 5000

#: id -> (build the input in a folder, a fragment the message must contain).
CASES: dict[str, tuple[Callable[[Path], str], str]] = {
    "jsonl line nested 100000 deep": (
        write("deep.jsonl", jsonl_bytes(good_jsonl()) + b"[" * DEEP + b"]" * DEEP + b"\n"), "line 9 nests JSON"),
    "json array nested 100000 deep": (write("deep.json", b"[" * DEEP + b"]" * DEEP), "nests JSON arrays or objects"),
    "text field nested 100000 deep": (
        write("deep_text.jsonl", b'{"text": ' + b"[" * DEEP + b"]" * DEEP + b', "label": 1}\n'), "too deeply"),
    "label 'nan' (pandas)": (write("nan.csv", csv_bytes([*good_rows(), ("unlabelled", "nan")])), "missing value"),
    "label 'NaN' (json string)": (
        write("nan.jsonl", jsonl_bytes([*good_jsonl(), {"text": "x", "label": "NaN"}])), "'NaN', which marks a"),
    "label 'None'": (write("none.csv", csv_bytes([*good_rows(), ("x", "None")])), "missing value"),
    "label empty": (write("empty.csv", csv_bytes([*good_rows(), ("x", "")])), "line 10 has no label"),
    "label null": (write("null.jsonl", jsonl_bytes([*good_jsonl(), {"text": "x", "label": None}])), "has no label"),
    "label 'inf'": (write("inf.csv", csv_bytes([*good_rows(), ("x", "-inf")])), "not a finite number"),
    "label Infinity (json)": (write("inf.jsonl", jsonl_bytes(good_jsonl()) + b'{"text": "x", "label": Infinity}\n'),
                              "finite"),
    "label of 5000 digits (csv)": (write("digits.csv", csv_bytes([*good_rows(), ("x", LONG_DIGITS)])),
                                   "label of 5,000 characters"),
    "label of 5000 digits (json)": (
        write("digits.jsonl", jsonl_bytes(good_jsonl()) + b'{"text": "x", "label": ' + LONG_DIGITS.encode() + b"}\n"),
        "number too long to read"),
    "label with a line break": (write("nl.csv", csv_bytes(good_rows()) + b'x,"po\ns"\n'), "line break"),
    "three labels": (write("three.csv", csv_bytes([*good_rows(), ("x", 2)])), "exactly two values"),
    "one class": (write("one.csv", csv_bytes([(f"text {i}", 1) for i in range(8)])), "needs two classes"),
    "each class one repeated sentence": (
        write("repeat.csv", csv_bytes([("I love it", 1), ("I hate it", 0)] * 20)), "1 different text(s) in 20 rows"),
    "both classes the same sentence": (write("same.csv", csv_bytes([("the same", 1), ("the same", 0)] * 10)),
                                       "carry both labels"),
    "duplicate texts across classes": (
        write("dup.csv", csv_bytes([*good_rows(), ("review 0 was bad", 1), ("review 2 was bad", 1)])),
        "2 text(s) carry both labels (the first at line 2 and line 10)"),
    "random binary": (write("noise.csv", bytes(range(256)) * 8), "not UTF-8 text"),
    "png image": (write("photo.csv", PNG + SECRET.encode()), "is a PNG image, not a CSV"),
    "zip archive": (make_zip, "zip archive"),
    "pickle": (write("data.jsonl", b"\x80\x04\x95" + SECRET.encode()), "Python pickle"),
    "NUL bytes (ascii binary)": (write("nul.csv", b"text,label\n" + SECRET.encode() + b"\x00\x01\x02,1\n"), "NUL"),
    "latin-1 text": (write("latin1.csv", csv_bytes(good_rows()) + "café,1\n".encode("latin-1")), "not UTF-8"),
    "utf-16 text": (write("utf16.csv", "text,label\nhello,1\n".encode("utf-16")), "UTF-16"),
    "csv without the columns": (write("passwd.csv", f"root:x:0:0:{SECRET}:/root:/bin/bash\n".encode() * 3),
                                "needs a header row naming columns 'text' and 'label'"),
    "csv with text but no label": (write("half.csv", f"text,{SECRET}\na,b\n".encode()), "no 'label' column"),
    "jsonl without the keys": (write("keys.jsonl", jsonl_bytes([{SECRET: "a", "label": 1}])), "no 'text'"),
    "csv field of 200000 characters": (
        write("huge.csv", csv_bytes(good_rows()) + b'"' + b"w " * 100_000 + b'",1\n'), "line 10 has a field longer than 131,072"),
    "jsonl text of 150000 characters": (
        write("huge.jsonl", jsonl_bytes([*good_jsonl(), {"text": "w" * 150_000, "label": 1}])),
        "text of 150,000 characters"),
    "lone surrogate": (write("surrogate.jsonl", jsonl_bytes(good_jsonl()) + b'{"text": "a\\ud800b", "label": 1}\n'),
                       "unpaired"),
    "file name with a line break": (write("bad\nname.csv", b"nothing here\n"), "bad\\nname.csv needs a header"),
    "a directory": (make_dir, "is a directory, not a dataset"),
    "a named pipe": (make_fifo, "not a regular file"),
    "a missing file": (lambda tmp: str(tmp / "gone.csv"), "no such file"),
}
if Path("/proc/self/mem").is_file():  # a regular file whose read fails (EIO)
    CASES["unreadable file"] = (lambda tmp: "/proc/self/mem", "cannot read mem")


@pytest.mark.parametrize("case", list(CASES))
def test_cli_refuses_hostile_dataset(case, tmp_path, tiny_dirs, survivor, capsys) -> None:
    build, fragment = CASES[case]
    line = refuse(capsys, "gains", "--model", str(tiny_dirs["gpt2"]), "--dataset", build(tmp_path), "--device", "cpu",
                  "--order", "4", "--n-eval", "2", "--sizes", "2,1,1", "--quiet")
    assert fragment in line, line
    assert SECRET not in line and len(line) < 400, line


@pytest.mark.parametrize("case", list(CASES))
def test_loader_refuses_hostile_dataset(case, tmp_path) -> None:
    build, fragment = CASES[case]
    target = build(tmp_path)
    is_file = os.path.isfile(target)
    with pytest.raises(InputError) as caught:  # the CLI's rule: a file is loaded, anything else is a name
        load_user_file(target) if is_file else load(target)
    message = str(caught.value)
    assert fragment in message and SECRET not in message and "\n" not in message, message


def test_the_rules_keep_what_is_fine() -> None:
    """Within-class repeats are allowed when each class still has 4 different texts; plain labels stay labels."""
    rows = [*good_rows(), ("review 1 was good", 1), ("review 0 was bad", 0)]
    data = load_user_file(csv_bytes(rows), filename="ok.csv")
    assert data.class_counts() == (5, 5)
    named = load_user_file(csv_bytes([(t, "nano" if y else "naan") for t, y in good_rows()]), filename="n.csv")
    assert named.classes == ("nano", "naan")  # near 'nan' is not missing
    assert load_user_file(csv_bytes([(t, -1 if y == 0 else 1) for t, y in good_rows()])).classes == ("1", "-1")


def test_gain_page_upload_of_a_bad_file_is_one_error(tiny_dirs, fresh_service, monkeypatch) -> None:
    from pages.common.datasets import UPLOAD
    from tests.apptest import open_page

    at = open_page("pages/gains.py", tiny_dirs["gpt2"], monkeypatch)
    at.radio(key="gn_ds_source").set_value(UPLOAD).run()
    at.file_uploader(key="gn_ds_file").set_value(("photo.csv", PNG + SECRET.encode(), "text/csv")).run()
    message = assert_one_line_error(at)
    assert "photo.csv is a PNG image" in message and SECRET not in message
    at.file_uploader(key="gn_ds_file").set_value(("nan.csv", csv_bytes([*good_rows(), ("x", "NaN")]),
                                                  "text/csv")).run()
    assert "missing value" in assert_one_line_error(at)  # the session is alive, the next file gets its message
