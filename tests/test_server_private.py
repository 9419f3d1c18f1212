"""The dashboard is private by default: the quick start listens on loopback only, errors hide their details.

The server test starts Streamlit with the command line of ``scripts/run.sh`` (read from the script, from
the repository root, so ``.streamlit/config.toml`` applies), waits for ``/_stcore/health`` on 127.0.0.1
and then checks every socket the process listens on, and that the machine's other addresses refuse a
connection. The app page itself never runs (no browser session), so nothing is loaded or built.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import tomllib

from tests.streamlit_server import free_port, running

ROOT = Path(__file__).resolve().parent.parent
LOOPBACK = {"127.0.0.1", "::1"}


def run_sh_command() -> list[str]:
    """The streamlit command of scripts/run.sh without the interpreter and the user's ``"$@"``."""
    script = (ROOT / "scripts" / "run.sh").read_text()
    match = re.search(r'^exec "\$PY" (.+) "\$@"\s*$', script, flags=re.MULTILINE)
    assert match, "scripts/run.sh must end with exec \"$PY\" -m streamlit run app.py ... \"$@\""
    return shlex.split(match.group(1))


def _other_addresses() -> list[str]:
    """This machine's non-loopback, non-link-local IP addresses (those another host could reach)."""
    found = []
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            ip = ipaddress.ip_address(a.address.split("%", 1)[0])
            if not (ip.is_loopback or ip.is_link_local):
                found.append(str(ip))
    return found


def test_quick_start_server_listens_on_loopback_only(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "streamlit.log"
    env = {**os.environ, "LLDD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    for key in [k for k in env if k.startswith("STREAMLIT_")]:  # the defaults, not a caller's overrides
        env.pop(key)
    argv = [sys.executable, *run_sh_command(), "--server.headless", "true", "--server.port", str(port)]
    with running(argv, env, log, port) as proc:
        listening = {c.laddr.ip for c in psutil.Process(proc.pid).net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening and listening <= LOOPBACK, listening
        for ip in _other_addresses():
            with pytest.raises(OSError):  # refused: nothing listens there
                socket.create_connection((ip, port), timeout=2).close()


def test_config_is_private_and_only_docker_exposes_it() -> None:
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] in ("localhost", "127.0.0.1")
    assert config["client"]["showErrorDetails"] == "none"  # the most restrictive value Streamlit accepts
    assert config["logger"]["enableRich"] is False  # tracebacks through logging, not a terminal panel
    command = run_sh_command()
    assert not any("server.address" in part for part in command)  # exposing stays the user's "$@" choice
    assert "--server.address=0.0.0.0" in (ROOT / "Dockerfile").read_text()  # the image exposes it, on purpose


def test_browser_gets_no_error_details_and_the_log_gets_the_traceback(tmp_path: Path) -> None:
    """An unexpected exception under the repository's config: a generic message, the traceback on stderr."""
    secret = tmp_path / "secret_module.py"
    script = f"raise RuntimeError('failed reading {secret}')"
    probe = ("from streamlit.testing.v1 import AppTest\n"
             f"at = AppTest.from_string({script!r}).run()\n"
             "(shown,) = at.exception\n"
             "print('SHOWN', repr(shown.message), repr(list(shown.stack_trace)), shown.is_warning)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMLIT_")}  # the config file decides
    done = subprocess.run([sys.executable, "-c", probe], check=False, cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    shown = next(line for line in done.stdout.splitlines() if line.startswith("SHOWN"))
    assert str(secret) not in shown and "RuntimeError" not in shown and "[]" in shown, shown
    assert "Traceback (most recent call last)" in done.stderr and f"RuntimeError: failed reading {secret}" \
        in done.stderr, done.stderr[-3000:]
