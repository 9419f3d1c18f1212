"""What every bench shares: its argument parser's common options, model shapes, and GPU syncing.

Imported as ``common`` (a bench's own folder is ``sys.path[0]``).
"""

from __future__ import annotations

import argparse
import os

import torch


def bench_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of the bench's docstring, defaults in ``--help``."""
    return argparse.ArgumentParser(description=(doc or "").split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_llama_shape(p: argparse.ArgumentParser, *, layers: int, tokens: int, hidden: int = 512, heads: int = 8,
                    vocab: int = 32000) -> None:
    """The random Llama-style model's shape (:func:`jacobian.build_model`) and the prompt length."""
    p.add_argument("--hidden", type=int, default=hidden, help="hidden size d")
    p.add_argument("--intermediate", type=int, default=None,
                   help="MLP size; None: round(2.6875 * hidden), 1376 for 512")
    p.add_argument("--layers", type=int, default=layers, help="number of decoder blocks")
    p.add_argument("--heads", type=int, default=heads, help="attention heads")
    p.add_argument("--kv-heads", type=int, default=None, help="key/value heads; None: half the heads")
    p.add_argument("--vocab", type=int, default=vocab, help="vocabulary size")
    p.add_argument("--tokens", type=int, default=tokens, help="prompt length T (random ids)")


def add_gpt2_shape(p: argparse.ArgumentParser, vocab_help: str = "vocabulary size") -> None:
    """A random GPT-2-small-shaped model (12 × 768, 12 heads)."""
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=8000, help=vocab_help)


def add_run_options(p: argparse.ArgumentParser, *, device: str = "cpu", seed: bool = True) -> None:
    """Threads, seed, device and the ``--summary`` file of ``bench/gpu.sh``'s table."""
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch intra-op threads")
    if seed:
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=device, help="cpu or cuda (the model is built on it)")
    p.add_argument("--summary", metavar="FILE", default=None, help="append the result rows for bench/gpu.sh's table")


def sync() -> None:
    """Wait for queued GPU work, so wall times include it (nothing to wait for on a CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
