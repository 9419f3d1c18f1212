from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

# Tests never reach the network: hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Under pytest-xdist (scripts/test.sh runs two workers on two cores) each worker computes on one thread, unless the
# caller chose a count: two workers of two threads each would slow each other several times over. Set before torch
# loads, so the servers and builds the tests start inherit it too.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from tests.hostile import _survivor_template, survivor  # noqa: F401  (the hostile-input suites' shared fixtures)
from tests.tiny import FAMILIES, save_tiny


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """Every family's tiny model saved as a real directory (built once per session)."""
    root = tmp_path_factory.mktemp("tiny_models")
    return {family: save_tiny(family, root / family) for family in FAMILIES}


def _demo(tmp_path_factory, name: str) -> Path:
    """Demo model ``name`` built once per test run at its full training budget (~1.5 min on 2 cores).

    The build is kept in one folder that every pytest-xdist worker of the run shares (their base temporary
    folders have one parent), under a file lock: the first worker to ask builds it, the others wait and copy.
    ``LLDD_TEST_DEMO_DIR`` (a local development aid; CI never sets it) keeps the builds between runs instead:
    a build found there with the current build version is copied instead of rebuilt. Builds are deterministic
    (seeded, thread-count independent), so the copy is the model a build would give.
    """
    import shutil

    from filelock import FileLock

    from lldd_core.demo.build import BUILD_VERSION, META_FILE, build_demo

    target = tmp_path_factory.mktemp("demo") / name
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    kept = Path(os.environ.get("LLDD_TEST_DEMO_DIR") or shared / "demo-builds") / name
    kept.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(kept) + ".lock"):
        try:
            built = json.loads((kept / META_FILE).read_text()).get("version") == BUILD_VERSION
        except (OSError, ValueError):
            built = False
        if not built:
            build_demo(name, target=kept)
    shutil.copytree(kept, target)
    return target


@pytest.fixture(scope="session")
def demo_default(tmp_path_factory) -> Path:
    """The default demo model (see :func:`_demo`)."""
    from lldd_core.demo import DEFAULT_DEMO

    return _demo(tmp_path_factory, DEFAULT_DEMO)


@pytest.fixture(scope="session")
def demo_llama(tmp_path_factory) -> Path:
    """The Llama demo model (the family of the paper's examples; see :func:`_demo`)."""
    return _demo(tmp_path_factory, "llama-small")


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


@pytest.fixture(scope="module")
def module_service(request, tmp_path_factory):
    """A service on an empty cache shared by one test module (results computed once per module)."""
    from lldd_core.service import Service
    from lldd_core.store.cache import ResultCache

    svc = Service(ResultCache(tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1]) / "cache"))
    yield svc
    svc.cache.close()


@pytest.fixture(scope="session")
def gpt2_f64(tiny_dirs):
    """The tiny GPT-2 as a float64 CPU model spec (the usual subject of the exact-equality tests)."""
    from lldd_core.models.loading import ModelSpec

    return ModelSpec(str(tiny_dirs["gpt2"]), dtype="float64", device="cpu")
