"""The project as a package: the wheel, its metadata, and an installed ``lldd`` command that works.

The install test builds a wheel from a copy of the sources (so no ``build/`` or ``*.egg-info`` lands
in the shared checkout), installs it into a fresh virtual environment and runs the venv's ``lldd``
from a folder outside the repository, so it imports the installed package, not the checkout.

Offline by design: the venv is created with ``--system-site-packages``, so the declared runtime
dependencies (torch, transformers, ...) resolve from this machine's site-packages instead of being
downloaded; the wheel goes in with ``--no-index --no-deps``, and a separate check inside the venv
proves that every requirement the wheel declares is installed there at a version it accepts, which
is what ``pip install .`` with an index would otherwise have resolved. The wheel is built with
``--no-build-isolation`` (the installed setuptools, which must satisfy ``build-system.requires``).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.tiny import PROMPT, save_tiny

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (requires-python): pip's and pytest's tomli
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

#: Inside the venv: every requirement of the installed ``lldd`` (no extra) is present at an accepted version.
CHECK_REQUIREMENTS = """
import json
from importlib.metadata import PackageNotFoundError, requires, version
from packaging.requirements import Requirement

problems, checked = [], []
for req in map(Requirement, requires("lldd")):
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # an optional extra's requirement
    try:
        found = version(req.name)
    except PackageNotFoundError:
        problems.append(f"{req} is not installed")
        continue
    if not req.specifier.contains(found, prereleases=True):
        problems.append(f"{req} but {found} is installed")
    checked.append(req.name)
import lldd_core
print(json.dumps({"problems": problems, "checked": checked, "lldd_core": lldd_core.__file__}))
"""


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything that would put the checkout on the import path."""
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PIP_NO_INPUT="1", **extra)
    return env


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> Path:
    """What the sdist would hold, copied: pyproject, README, LICENSE and the package."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "lldd_core", src / "lldd_core", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return src


@pytest.fixture(scope="module")
def wheel(sources, tmp_path_factory) -> Path:
    dist = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(dist), str(sources)], cwd=sources, env=_clean_env())
    wheels = list(dist.glob("lldd-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module_data_file_and_the_command(wheel, sources):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(sources).as_posix() for p in (sources / "lldd_core").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel (package discovery)"
    data = {p.relative_to(sources).as_posix() for p in (sources / "lldd_core" / "data").iterdir()
            if p.suffix in {".jsonl", ".json"}}
    assert "lldd_core/data/manifest.json" in data and len(data) >= 5
    assert data - names == set(), "data files missing from the wheel"
    assert not any(n.startswith(("tests/", "bench/", "pages/")) for n in names)
    info = wheel.name.split("-py3")[0]  # lldd-0.1.0
    entry_points = zipfile.ZipFile(wheel).read(f"{info}.dist-info/entry_points.txt").decode()
    assert "lldd = lldd_core.cli.main:main" in entry_points
    metadata = zipfile.ZipFile(wheel).read(f"{info}.dist-info/METADATA").decode()
    assert "License-Expression: Apache-2.0" in metadata
    assert f"{info}.dist-info/licenses/LICENSE" in names
    declared = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:") and "extra ==" not in line]
    assert len(declared) == len(PROJECT["dependencies"]) >= 10


def test_the_version_has_one_source(wheel):
    """pyproject reads the version from lldd_core/_version.py (it is part of every cache key)."""
    import lldd_core
    from lldd_core import _version

    assert "version" not in PROJECT and PROJECT["dynamic"] == ["version"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lldd_core._version.__version__"}
    assert lldd_core.__version__ == _version.__version__
    assert wheel.name.startswith(f"lldd-{_version.__version__}-")


def test_installed_wheel_runs_help_and_an_analysis_outside_the_checkout(wheel, tmp_path):
    venv = tmp_path / "venv"
    # --without-pip: the system's pip is visible through the system site-packages and installs into the venv
    _run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], cwd=tmp_path,
         env=_clean_env())
    python, lldd = venv / "bin" / "python", venv / "bin" / "lldd"
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = _clean_env(LLDD_CACHE_DIR=str(tmp_path / "cache"), VIRTUAL_ENV=str(venv))
    _run([str(python), "-m", "pip", "install", "-q", "--no-index", "--no-deps", str(wheel)], cwd=outside, env=env)

    report = json.loads(_run([str(python), "-c", CHECK_REQUIREMENTS], cwd=outside, env=env).stdout)
    assert report["problems"] == []
    assert {canonicalize_name(n) for n in report["checked"]} == {
        canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert Path(report["lldd_core"]).resolve().is_relative_to(venv.resolve()), report["lldd_core"]

    assert lldd.exists(), "the console script was not installed"
    helped = _run([str(lldd), "--help"], cwd=outside, env=env)
    for command in ("jacobian", "spectrum", "gains", "steer", "demo"):
        assert command in helped.stdout

    listed = json.loads(_run([str(lldd), "datasets", "--json", "-"], cwd=outside, env=env).stdout)
    builtin = {d["name"]: d for d in listed["datasets"] if d["source"] == "builtin"}
    assert {"sentiment", "politeness", "topic", "truth"} <= set(builtin)  # read from the installed package data
    assert all(d["size"] >= 1000 for d in builtin.values())

    model = save_tiny("gpt2", tmp_path / "tiny-gpt2")
    done = _run([str(lldd), "jacobian", "--model", str(model), "--prompt", PROMPT, "--device", "cpu", "--json", "-"],
                cwd=outside, env=env, timeout=180)
    result = json.loads(done.stdout)
    assert result["tokens"] and len(result["input_ids"]) == len(result["tokens"])
    assert result["reconstruction_error"] < 1e-4  # the detached map reproduces the output
    assert result["cache_hit"] is False
    refused = subprocess.run([str(lldd), "jacobian", "--model", str(tmp_path / "no-such-model"), "--prompt", PROMPT],
                             cwd=outside, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert refused.returncode == 2 and refused.stderr.startswith("error: ")  # the script passes main()'s status on


# --- declared dependencies against the imports and the pins ------------------------------------------------


def _third_party_imports() -> dict[str, set[str]]:
    """Top-level names of every absolute non-stdlib import in lldd_core -> the files importing them."""
    found: dict[str, set[str]] = {}
    for path in (ROOT / "lldd_core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top != "lldd_core":
                    found.setdefault(top, set()).add(path.relative_to(ROOT).as_posix())
    return found


def _declared() -> tuple[set[str], set[str]]:
    runtime = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    extras = {canonicalize_name(Requirement(r).name) for reqs in PROJECT["optional-dependencies"].values()
              for r in reqs}
    return runtime, extras


def test_every_third_party_import_is_a_declared_dependency():
    runtime, extras = _declared()
    dists = packages_distributions()
    imports = _third_party_imports()
    assert {"torch", "transformers", "numpy"} <= set(imports)  # the scan sees the package
    uncovered = {}
    for module, files in sorted(imports.items()):
        owners = {canonicalize_name(d) for d in dists.get(module, [])}
        assert owners, f"{module} (imported by {sorted(files)}) is not installed here: cannot tell its distribution"
        if not owners & (runtime | extras):
            uncovered[module] = sorted(files)
    assert uncovered == {}, "imported but neither a dependency nor an optional extra of pyproject.toml"
    assert "streamlit" not in imports  # the core never imports the dashboard's framework


def _pins(name: str) -> dict[str, Version]:
    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"{name}: {line} is not an exact pin"
            pins[canonicalize_name(req.name)] = Version(spec.version)
    return pins


def test_lower_bounds_admit_the_pinned_versions():
    pins = {**_pins("requirements.txt"), **_pins("requirements-dev.txt")}
    runtime, _ = _declared()
    assert runtime <= set(_pins("requirements.txt")), "a runtime dependency has no pin in requirements.txt"
    every = PROJECT["dependencies"] + [r for reqs in PROJECT["optional-dependencies"].values() for r in reqs]
    for text in every:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if name == "lldd":
            continue  # an extra naming other extras
        assert all(spec.operator == ">=" for spec in req.specifier), f"{text}: lower bounds only"
        if name in pins:
            assert req.specifier.contains(pins[name]), f"{text} refuses the pinned {pins[name]}"
    assert PROJECT["scripts"] == {"lldd": "lldd_core.cli.main:main"}
    assert PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"] == ["lldd_core*"]
