from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach the network: hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests.hostile import _survivor_template, survivor  # noqa: F401  (the hostile-input suites' shared fixtures)
from tests.tiny import FAMILIES, save_tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every family's tiny model saved as a real directory (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


@pytest.fixture(scope="session")
def demo_default(tmp_path_factory) -> Path:
    """The default demo model, built once per session at its full training budget (~1.5 min)."""
    from lldd_core.demo import DEFAULT_DEMO, build_demo

    target = tmp_path_factory.mktemp("demo") / DEFAULT_DEMO
    build_demo(DEFAULT_DEMO, target=target)
    return target


@pytest.fixture(scope="session")
def demo_llama(tmp_path_factory) -> Path:
    """The Llama demo model (the family of the paper's examples), built once per session (~1.5 min)."""
    from lldd_core.demo import build_demo

    target = tmp_path_factory.mktemp("demo") / "llama-small"
    build_demo("llama-small", target=target)
    return target


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch) -> Path:
    """An empty result cache for this test."""
    path = tmp_path / "cache"
    monkeypatch.setenv("LLDD_CACHE_DIR", str(path))
    return path


@pytest.fixture()
def fresh_service(cache_dir, monkeypatch):
    """A new process-wide service on this test's empty cache directory (AppTest runs in-process)."""
    import lldd_core.service as service_module

    monkeypatch.setattr(service_module, "_SERVICE", None)
    yield
    if service_module._SERVICE is not None:
        service_module._SERVICE.cache.close()
