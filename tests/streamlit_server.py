"""A real ``streamlit run`` in a subprocess for the server and browser tests: a free port, the health
check, and a context manager that always stops the process."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STARTUP_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_S) -> None:
    """Poll ``url/_stcore/health`` until it answers ``ok``; fail early (with the log's tail) if the server died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"streamlit did not become healthy within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def running(argv: Sequence[str], env: dict[str, str], log: Path, port: int,
            timeout: float = STARTUP_S) -> Iterator[subprocess.Popen]:
    """``argv`` started from the repository root (output to ``log``), healthy on ``port``; terminated (then
    killed) on exit, also when the test fails."""
    with log.open("wb") as out:
        proc = subprocess.Popen(list(argv), cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc, log, timeout)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
