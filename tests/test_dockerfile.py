"""The container definition: what can be checked without Docker (it cannot build here).

The Dockerfile parses into known instructions; its base image and packages are pinned (packages
come from requirements.txt, every line of which pins an exact version); it runs as a non-root user,
serves on 8501 with a health check on Streamlit's health endpoint, keeps the result and Hugging
Face caches on volumes, never bakes a hub token in, and starts the dashboard with the same
``streamlit run app.py`` as the README's quick start (scripts/run.sh).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KNOWN = {"FROM", "ENV", "RUN", "WORKDIR", "COPY", "USER", "VOLUME", "EXPOSE", "HEALTHCHECK", "CMD", "ARG", "LABEL",
         "ENTRYPOINT"}


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    joined = re.sub(r"\\\n", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#")))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def of(kind: str) -> list[str]:
    return [args for word, args in instructions() if word == kind]


def test_dockerfile_parses_into_known_instructions():
    steps = instructions()
    assert steps[0][0] == "FROM"
    assert {word for word, _ in steps} <= KNOWN, {word for word, _ in steps} - KNOWN


def test_base_image_and_packages_are_pinned():
    (base,) = of("FROM")
    assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base), base
    assert any("pip install -r requirements.txt" in run for run in of("RUN"))
    assert any(args.split()[0] == "requirements.txt" for args in of("COPY"))
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.+\-]*", line), f"not pinned: {line}"
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()


def test_runs_as_non_root_on_8501_with_a_health_check_and_volumes():
    users = of("USER")
    assert users and users[-1] not in ("root", "0")
    assert of("EXPOSE") == ["8501"]
    (health,) = of("HEALTHCHECK")
    assert "/_stcore/health" in health and "8501" in health
    volumes = json.loads(of("VOLUME")[0])
    env = " ".join(of("ENV"))
    cache = re.search(r"LLDD_CACHE_DIR=(\S+)", env).group(1)
    hf = re.search(r"HF_HOME=(\S+)", env).group(1)
    assert cache in volumes and hf in volumes


def test_no_token_is_baked_in():
    for word, args in instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert "TOKEN" not in args.upper(), args


def test_entry_command_is_the_quick_start_one():
    cmd = json.loads(of("CMD")[0])
    assert cmd[:5] == ["python", "-m", "streamlit", "run", "app.py"]
    assert "--server.port=8501" in cmd and "--server.address=0.0.0.0" in cmd
    run_script = (ROOT / "scripts" / "run.sh").read_text()
    assert re.search(r'-m streamlit run app\.py', run_script)
    readme = (ROOT / "README.md").read_text()
    assert "bash scripts/run.sh" in readme and "docker run --gpus all" in readme and "-p 8501:8501" in readme
    # every file the app needs at run time is copied in
    copied = {shlex.split(args)[0] for args in of("COPY")}
    assert {"app.py", "pages", "lldd_core", "requirements.txt"} <= copied
