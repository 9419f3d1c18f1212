"""Hub models without a hub: a quick one-line error, the local cache used offline, the picker's local marks.

Nothing touches the network: the unreachable endpoint is a closed local port (127.0.0.1:9), the
reachable one a local HTTP server, and the cache a folder laid out as the hub client lays it out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import huggingface_hub.constants
import pytest
from streamlit.testing.v1 import AppTest

from lldd_core.errors import ModelLoadError
from lldd_core.models import hub
from lldd_core.models.loading import ModelSpec, load_model, resolve_model
from tests.apptest import APP
from tests.tiny import save_tiny

CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fake_cache(root: Path, repo_id: str, weights: bool = True) -> Path:
    """``root`` laid out as a hub cache holding ``repo_id`` at ``main`` (a tiny GPT-2; without weights if asked)."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = save_tiny("gpt2", repo / "snapshots" / COMMIT)
    if not weights:
        for f in snapshot.glob("*.safetensors"):
            f.unlink()
    return root


@pytest.fixture
def unreachable_hub(monkeypatch: pytest.MonkeyPatch):
    """The hub client online but pointed at a closed port; probes start afresh."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", CLOSED)
    hub.forget_probes()
    yield
    hub.forget_probes()


#: The CLI run in a child process, timed from after its imports (starting Python and torch is not the hub's wait).
TIMED_CLI = """
import sys, time
import transformers, lldd_core.models.loading
from lldd_core.cli.main import main
start = time.monotonic()
status = main(sys.argv[1:])
print(time.monotonic() - start)
sys.exit(status)
"""


def test_an_unreachable_hub_fails_fast_with_one_line(tmp_path: Path) -> None:
    """The real environment: HF_ENDPOINT unreachable, offline mode off, the model not cached (the CLI, exit 2)."""
    env = {**os.environ, "HF_ENDPOINT": CLOSED, "HF_HUB_OFFLINE": "0", "HF_HUB_CACHE": str(tmp_path / "hf"),
           "LLDD_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TRANSFORMERS_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", TIMED_CLI, "memory", "--model", "gpt2"], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"The Hugging Face hub ({CLOSED}) is unreachable and 'gpt2' is not in the local cache" in lines[0]
    assert "use a local path or a demo model" in lines[0]
    elapsed = float(done.stdout.strip().splitlines()[-1])
    assert elapsed < 15, elapsed  # the hub client's retries alone take ~25 s per file


def test_an_unreachable_hub_resolves_a_cached_model(unreachable_hub, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_cache(tmp_path / "hf", "someone/tiny")))
    started = time.monotonic()
    info = resolve_model(ModelSpec("someone/tiny"))
    assert time.monotonic() - started < 15
    assert info.family == "GPT-2" and info.n_layers == 2
    assert info.revision == COMMIT  # the cached commit keys its results, as online
    handle = load_model(info)  # the weights come from the cache too
    assert handle.n_layers == 2 and handle.revision == COMMIT
    with pytest.raises(ModelLoadError, match="unreachable and 'someone/other' is not in the local cache"):
        resolve_model(ModelSpec("someone/other"))


def test_offline_mode_uses_the_cache_and_names_the_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_cache(tmp_path / "hf", "someone/tiny")))
    assert resolve_model(ModelSpec("someone/tiny")).revision == COMMIT
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE is set .* set HF_HUB_OFFLINE=0 when online"):
        resolve_model(ModelSpec("someone/other"))


def test_is_cached_needs_config_and_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_cache(tmp_path, "someone/tiny")
    fake_cache(tmp_path, "someone/config-only", weights=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    assert hub.is_cached("someone/tiny") and hub.is_cached("someone/tiny", COMMIT)
    assert not hub.is_cached("someone/tiny", "v2")  # another revision is not there
    assert not hub.is_cached("someone/config-only")
    assert not hub.is_cached("someone/absent") and not hub.is_cached("not a repo id!")


class _Answer(BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802  (http.server's naming)
        self.send_response(404)  # any HTTP answer means the endpoint is there
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_probe_tells_reachable_from_unreachable_and_remembers(unreachable_hub) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        hub.forget_probes()
        assert hub.hub_reachable(f"http://127.0.0.1:{server.server_port}")
        assert not hub.hub_reachable(CLOSED)
        server.shutdown()
        assert hub.hub_reachable(f"http://127.0.0.1:{server.server_port}")  # remembered for a while
        hub.forget_probes()
        assert not hub.hub_reachable(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        hub.forget_probes()


def test_the_picker_marks_models_in_the_local_cache(tmp_path: Path, fresh_service,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_CACHE", str(fake_cache(tmp_path / "hf", "gpt2")))
    monkeypatch.setenv("LLDD_DEMO_DIR", str(tmp_path / "demo"))  # no demo model built
    monkeypatch.setenv("LLDD_DEFAULT_MODEL", "gpt2")
    at = AppTest.from_file(APP, default_timeout=120).run()
    assert not at.exception
    labels = list(at.selectbox(key="sidebar_model_choice").options)
    assert "gpt2 (default) ✓" in labels  # in the cache
    assert "gpt2-medium" in labels and "EleutherAI/pythia-160m" in labels  # not in the cache: unmarked
    assert "demo:gpt2-small (not built)" in labels
    assert any("local Hugging Face cache" in c.value for c in at.sidebar.caption)
    assert not at.error, [e.value for e in at.error]  # the cached model resolves offline
