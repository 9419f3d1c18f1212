"""Shared checks of the hostile-input suites: a refused CLI call, a clean app error, a surviving result.

Every hostile input must get exit status 2 (CLI) or one ``st.error`` (app) whose message is one line
saying what to do, no traceback, and leave a result cached before it a hit with identical numbers.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from lldd_core import service as service_module
from lldd_core.cli.main import main
from tests.tiny import PROMPT


def refuse(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run the CLI in-process; assert it refused with one ``error:`` line and exit 2; return the line."""
    service_module._SERVICE = None  # each call is a fresh process as far as lldd is concerned
    try:
        code = main(list(argv))
    except SystemExit as err:  # argparse's own refusals exit 2 too
        code = err.code
    out, err = capsys.readouterr()
    assert code == 2, (argv, code, out, err)
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("usage:")
             and not line.startswith(" ")]
    assert len(lines) == 1, (argv, err)
    line = lines[0]
    assert ": error:" in line or line.startswith("error:"), (argv, line)
    return line


def assert_one_line_error(at) -> str:
    """An AppTest run that shows exactly one ``st.error`` and no exception; returns its message."""
    assert not at.exception, [e.value for e in at.exception]
    assert len(at.error) == 1, [e.value for e in at.error]
    message = str(at.error[0].value)
    assert "Traceback" not in message and "\n" not in message.strip(), message
    return message


def survivor_argv(model: Path) -> list[str]:
    """The CLI call whose cached result must survive the hostile inputs."""
    return ["jacobian", "--model", str(model), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--top-k", "3", "--json", "-", "--quiet"]


class Survivor:
    """A result cached before the hostile inputs; :meth:`check` asserts it is still a hit, unchanged.

    The result is computed once per session into a template folder; each test gets a copy of that
    cache folder (so every test starts from a cache that already holds it) at the cost of a file copy.
    """

    def __init__(self, model: Path, cache: Path, capsys: pytest.CaptureFixture[str], first: dict | None = None) -> None:
        self.model, self.cache, self.capsys = model, cache, capsys
        self.argv = survivor_argv(model)
        if first is None:
            first = self._run()
            assert first["cache_hit"] is False
        self.first = first

    def _run(self) -> dict:
        service_module._SERVICE = None
        self.capsys.readouterr()  # drop what the test printed
        code = main(self.argv)
        out, err = self.capsys.readouterr()
        assert code == 0, err
        return json.loads(out)

    def check(self) -> None:
        again = self._run()
        assert again["cache_hit"] is True
        for key in ("reconstruction_error", "plain_reconstruction_error", "bias_norm", "singular_values"):
            assert again[key] == self.first[key], key


@pytest.fixture(scope="session")
def _survivor_template(tiny_dirs, tmp_path_factory) -> tuple[Path, dict]:
    """A cache folder holding the survivor's result, and that result's JSON (computed once per session)."""
    folder = tmp_path_factory.mktemp("survivor-cache")
    previous, saved = os.environ.get("LLDD_CACHE_DIR"), service_module._SERVICE
    os.environ["LLDD_CACHE_DIR"] = str(folder)
    try:
        service_module._SERVICE = None
        argv = survivor_argv(tiny_dirs["gpt2"])
        with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()):
            assert main(argv) == 0
        if service_module._SERVICE is not None:
            service_module._SERVICE.cache.close()
    finally:
        service_module._SERVICE = saved
        if previous is None:
            os.environ.pop("LLDD_CACHE_DIR", None)
        else:
            os.environ["LLDD_CACHE_DIR"] = previous
    first = json.loads(out.getvalue())
    assert first["cache_hit"] is False
    return folder, first


@pytest.fixture()
def survivor(tiny_dirs, cache_dir, capsys, monkeypatch, _survivor_template):
    """A jacobian result cached in this test's cache (a copy of the session's); checked again after the test."""
    monkeypatch.setattr(service_module, "_SERVICE", None)
    template, first = _survivor_template
    shutil.copytree(template, cache_dir, dirs_exist_ok=True)
    keeper = Survivor(tiny_dirs["gpt2"], cache_dir, capsys, first=first)
    yield keeper
    keeper.check()
