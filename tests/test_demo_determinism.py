"""A demo build gives the same files bit for bit whatever the thread count (issue 13).

Two processes build gpt2-small for a few steps: one with ``OMP_NUM_THREADS=1`` computing the batch
shards one after the other, one with two OpenMP/MKL threads (also set with ``torch.set_num_threads``)
and two shard workers. Weights, tokenizer and the reported figures must be identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lldd_core.demo import build

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6

SCRIPT = """
import json, sys, torch
from lldd_core.demo import build
threads, workers, target = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
torch.set_num_threads(threads)
build.train_workers = lambda: workers
info = build.build_demo("gpt2-small", steps={steps}, target=target)
print(json.dumps({{"threads_after": torch.get_num_threads(), "heldout": info.heldout_loss,
                  "facts": info.fact_accuracy}}))
"""


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _start(threads: int, workers: int, target: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "PYTHONPATH": str(ROOT), "TRANSFORMERS_VERBOSITY": "error"}
    return subprocess.Popen([sys.executable, "-c", SCRIPT.format(steps=STEPS), str(threads), str(workers), str(target)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_one_and_two_threads_build_identical_files(tmp_path):
    runs = {(1, 1): tmp_path / "one", (2, 2): tmp_path / "two"}
    procs = {key: _start(*key, target) for key, target in runs.items()}  # both at once: half the wall time
    reports = {}
    for key, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        reports[key] = json.loads(out.strip().splitlines()[-1])
    one, two = runs[(1, 1)], runs[(2, 2)]
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert _digest(one / name) == _digest(two / name), name
    assert reports[(1, 1)]["heldout"] == reports[(2, 2)]["heldout"]
    assert reports[(1, 1)]["facts"] == reports[(2, 2)]["facts"]
    assert reports[(2, 2)]["threads_after"] == 2  # the build restores the caller's thread count


def test_single_threaded_torch_restores_the_thread_count_also_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), build.single_threaded_torch():
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_sharded_gradient_is_the_same_on_workers_or_inline(tiny_dirs):
    """The pool only changes who computes a shard, never the bits of the summed gradient."""
    from concurrent.futures import ThreadPoolExecutor

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_dirs["gpt2"], dtype=torch.float32)
    params = list(model.parameters())
    batch = torch.randint(0, model.config.vocab_size, (4, 9), generator=torch.Generator().manual_seed(0))
    with build.single_threaded_torch():
        inline = build.batch_gradient(model, params, batch)
        with ThreadPoolExecutor(2) as pool:
            pooled = build.batch_gradient(model, params, batch, pool)
    assert inline[0] == pooled[0]
    assert all(torch.equal(a, b) for a, b in zip(inline[1], pooled[1]))
    # and it is the gradient of the mean loss over the whole batch (up to rounding)
    full = torch.autograd.grad(build._shard_loss(model, batch), params)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-6) for a, b in zip(inline[1], full))
