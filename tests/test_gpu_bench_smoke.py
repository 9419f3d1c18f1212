"""bench/gpu.sh: the GPU measurements' one command, kept runnable without a GPU.

``--cpu-smoke`` runs every bench with the GPU run's flags at tiny size on the CPU and must print the
summary table with a row and a ratio per bench; the GPU run's own command lines (``--dry-run``) must
parse with each bench's argument parser and name ``--device cuda``; without CUDA the GPU run refuses
with one clear line. The GPU path itself needs a GPU machine (see docs/PERFORMANCE.md).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu.sh"
BENCHES = ("jacobian", "spectral", "gains", "steering", "graph", "long_prompt")
COLUMNS = ["bench", "what", "model", "device", "ours", "baseline", "ratio", "same numbers"]


def _gpu_sh(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _table(text: str) -> list[list[str]]:
    """The rows of the first markdown table after the '## bench/gpu.sh' heading (header row first)."""
    lines = text.split("## bench/gpu.sh", 1)[1].splitlines()
    rows = [line for line in lines if line.startswith("|")]
    assert rows, text
    return [[cell.strip() for cell in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows if not row.startswith("|---")]


def _bench_module(script: str):
    spec = importlib.util.spec_from_file_location(f"bench_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "bench"))  # the benches import bench/summary.py as a sibling
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(ROOT / "bench"))
    return module


def test_cpu_smoke_prints_a_row_with_a_ratio_for_every_bench(tmp_path):
    done = _gpu_sh("--cpu-smoke", env={"LLDD_BENCH_OUT": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    header, *rows = _table(done.stdout)
    assert header == COLUMNS
    for bench in BENCHES:
        mine = [row for row in rows if row[0] == bench]
        assert mine, f"no row for {bench}"
        for row in mine:
            assert re.fullmatch(r"\d+\.\d\dx( \(.+\))?", row[6]), row
            assert row[3] == "cpu" and row[4] and row[5]
    # each bench's own output is intact beside the table
    logs = {p.stem: p.read_text() for p in tmp_path.glob("*.log")}
    assert "speed ratio (reference / ours)" in logs["jacobian"] and "\nOK\n" in logs["jacobian"]
    assert all(part in logs["spectral"] for part in ("[1] top-4 spectra", "[2] all-layer", "[3] peak memory"))
    assert "largest difference blockwise - today" in logs["gains"] and "layer evals" in logs["gains"]
    assert "LQR overhead per token" in logs["steering"]
    assert "speed ratio (baseline / ours)" in logs["graph"] and "\nOK\n" in logs["graph"]
    assert "per-token matrix-free extrapolated to all 32 positions" in logs["long-prompt"]
    assert (tmp_path / "summary.md").read_text().strip() in done.stdout


def test_gpu_command_lines_parse_and_name_cuda():
    gpu = [shlex.split(line) for line in _gpu_sh("--dry-run").stdout.splitlines()]
    smoke = [shlex.split(line) for line in _gpu_sh("--dry-run", "--cpu-smoke").stdout.splitlines()]
    assert {Path(cmd[0]).stem for cmd in gpu} == set(BENCHES)  # every bench runs on the GPU
    for script, *args in gpu:
        assert args[args.index("--device") + 1] == "cuda"
        parsed = _bench_module(script).parse_args([*args, "--summary", "out.jsonl"])
        assert parsed.device == "cuda"
        # the CPU smoke passes the same flags (tiny values), so a flag the GPU run needs cannot break unseen
        flags = {a for a in args if a.startswith("--")}
        smoke_flags = {a for s, *rest in smoke if s == script for a in rest if a.startswith("--")}
        assert flags <= smoke_flags, (script, flags - smoke_flags)
    shapes = " ".join(" ".join(cmd) for cmd in gpu)
    for shape in ("--hidden 4096 --intermediate 14336 --layers 32 --heads 32 --kv-heads 8 --vocab 128256",  # 3.1-8B
                  "--hidden 3072 --intermediate 8192 --layers 28 --heads 24 --kv-heads 8 --vocab 128256",  # 3.2-3B
                  "--layers 36 --hidden 1280 --heads 20"):  # GPT-2-large
        assert shape in shapes


def test_gpu_run_without_cuda_refuses_in_one_line():
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this holds on a GPU machine too
    done = _gpu_sh(env={"CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: bench/gpu.sh needs a CUDA GPU")
    assert "--cpu-smoke" in done.stderr
    bad = _gpu_sh("--fast")
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown option '--fast'")
