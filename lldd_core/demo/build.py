"""Build the demo models: tokenizer and small GPT-2 / Llama models trained on the lldd corpus.

Everything is deterministic in the seed: the corpus sample, the tokenizer, the initialization and the
order of training windows; and the weights do not depend on the thread count (``OMP_NUM_THREADS``,
``torch.set_num_threads``) or on the number of cores. torch's multi-threaded kernels split reductions
by thread, so their float rounding follows the thread count; a build therefore runs every kernel on one
thread (:func:`single_threaded_torch`) and gets its speed from data parallelism instead: each batch is
cut into a fixed number of shards (:data:`TRAIN_SHARDS`), each shard's gradient is computed on its own
worker thread, and the gradients are summed in shard order (:func:`batch_gradient`). The same weights
come out bit for bit whether one worker or several compute the shards. The tokenizer's trainer (Rust,
rayon) gave the same vocabulary and merges with ``RAYON_NUM_THREADS`` 1, 2 and 8 and with
``TOKENIZERS_PARALLELISM=false``. Other CPUs (another vector instruction set, another BLAS build) may still round
differently; see the README for the CPUs the documented figures were checked on.

A build writes into a temporary directory next to its target and renames it into place at the end,
so an interrupted build never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import corpus

if TYPE_CHECKING:  # imported lazily at run time
    from transformers import GPT2Config, LlamaConfig, PreTrainedModel, PreTrainedTokenizerBase, PreTrainedTokenizerFast

ProgressFn = Callable[[float, str], None]

META_FILE = "lldd_demo.json"
BUILD_VERSION = 2  # 2: thread-count-independent training (sharded batches, one thread per kernel)
# Shards per batch: a constant of the build (not the machine's core count), so the summation order of
# the gradient, and with it every weight, is the same everywhere. Two match the 2-core budget.
TRAIN_SHARDS = 2
BOS = "<|endoftext|>"


@dataclass(frozen=True)
class DemoConfig:
    """One demo model: architecture, shape and training budget."""

    name: str
    arch: str  # "gpt2" or "llama"
    size: str  # "small", "medium", "large"
    d_model: int
    n_layers: int
    n_heads: int
    steps: int
    batch: int = 32
    seq_len: int = 64
    lr: float = 3e-3
    n_sentences: int = 60_000


DEMO_CONFIGS: dict[str, DemoConfig] = {
    c.name: c
    for c in (
        # steps fit the budgets on 2 CPU cores (default <= 3 min, all four <= 12 min); see the README
        # for the measured build times
        DemoConfig("gpt2-small", "gpt2", "small", d_model=128, n_layers=4, n_heads=4, steps=600),
        DemoConfig("gpt2-medium", "gpt2", "medium", d_model=192, n_layers=6, n_heads=6, steps=450, lr=2e-3),
        DemoConfig("gpt2-large", "gpt2", "large", d_model=256, n_layers=8, n_heads=8, steps=220, lr=1.5e-3),
        DemoConfig("llama-small", "llama", "small", d_model=128, n_layers=4, n_heads=4, steps=600),
    )
}
DEFAULT_DEMO = "gpt2-small"
VOCAB_SIZE = 3000


@dataclass
class DemoInfo:
    """What ``demo info`` reports about a built model."""

    name: str
    path: str
    arch: str
    size: str
    parameters: int
    heldout_loss: float
    unigram_loss: float
    fact_accuracy: float
    build_seconds: float
    seed: int
    steps: int
    version: int = BUILD_VERSION


def demo_dir() -> Path:
    """Where demo models live: ``$LLDD_DEMO_DIR``, else ``demo/`` inside the result cache folder."""
    from ..env import env_folder
    from ..store.keys import cache_dir

    return env_folder("LLDD_DEMO_DIR", cache_dir() / "demo")


def demo_path(name: str) -> Path:
    return demo_dir() / name


def read_info(name: str) -> DemoInfo | None:
    """The metadata of a built demo model, or ``None`` if it is not (completely) built."""
    try:
        data = json.loads((demo_path(name) / META_FILE).read_text())
        info = DemoInfo(**data)
    except (OSError, ValueError, TypeError):
        return None
    if info.version != BUILD_VERSION or not (demo_path(name) / "model.safetensors").exists():
        return None
    return info


def is_built(name: str) -> bool:
    return read_info(name) is not None


# --- tokenizer -----------------------------------------------------------------------------------


def train_tokenizer(sentences: list[str], vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """A byte-level BPE over the corpus; prompts get ``<|endoftext|>`` prepended, as in training."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sentences, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, bos_id)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=BOS, unk_token=BOS)


# --- model ---------------------------------------------------------------------------------------


def make_config(cfg: DemoConfig, vocab_size: int, bos_id: int) -> GPT2Config | LlamaConfig:
    from transformers import GPT2Config, LlamaConfig

    if cfg.arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size, n_positions=128, n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=bos_id, eos_token_id=bos_id,
            pad_token_id=bos_id, tie_word_embeddings=True,
        )
    if cfg.arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=cfg.d_model, intermediate_size=int(8 * cfg.d_model / 3 // 32 * 32),
            num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_heads,
            max_position_embeddings=128, bos_token_id=bos_id, eos_token_id=bos_id, pad_token_id=bos_id,
            tie_word_embeddings=True,
        )
    raise ValueError(f"unknown demo architecture {cfg.arch!r}")


def _token_stream(tokenizer: PreTrainedTokenizerBase, sentences: list[str]) -> torch.Tensor:
    """All sentences as one stream, each after ``<|endoftext|>`` (the tokenizer prepends it).

    The corpus repeats sentences (about 14k distinct in 60k), so each distinct one is encoded once.
    """
    distinct = sorted(set(sentences))
    ids = dict(zip(distinct, tokenizer(distinct)["input_ids"]))
    return torch.tensor([t for text in sentences for t in ids[text]], dtype=torch.long)


def _lr(step: int, steps: int, peak: float, warmup: int = 40) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


@torch.no_grad()
def mean_loss(model: nn.Module, tokenizer: PreTrainedTokenizerBase, sentences: list[str], batch: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over the sentences, each scored on its own."""
    total, count = 0.0, 0
    for i in range(0, len(sentences), batch):
        enc = tokenizer(sentences[i : i + batch], return_tensors="pt", padding=True)
        ids, mask = enc["input_ids"], enc["attention_mask"]
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        target = ids[:, 1:]
        valid = mask[:, 1:].bool()
        loss = torch.nn.functional.cross_entropy(logits[valid], target[valid], reduction="sum")
        total += float(loss)
        count += int(valid.sum())
    return total / max(count, 1)


def unigram_loss(tokenizer: PreTrainedTokenizerBase, train_stream: torch.Tensor, sentences: list[str],
                 vocab_size: int) -> float:
    """Cross-entropy of an add-one unigram model of the training tokens on the same targets."""
    counts = torch.bincount(train_stream, minlength=vocab_size).double() + 1.0
    logp = torch.log(counts / counts.sum())
    targets = [t for seq in tokenizer(sentences)["input_ids"] for t in seq[1:]]
    return float(-logp[torch.tensor(targets)].mean())


@torch.no_grad()
def greedy_completion(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompt: str,
                      max_new_tokens: int = 4) -> str:
    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    for _ in range(max_new_tokens):
        # explicit all-ones mask: the demo tokenizer's BOS doubles as pad, which transformers warns about
        nxt = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1].argmax()
        ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return tokenizer.decode(ids[0, len(tokenizer(prompt)["input_ids"]) :].tolist())


def fact_accuracy(model: nn.Module, tokenizer: PreTrainedTokenizerBase) -> float:
    """Share of :data:`corpus.FACT_PROMPTS` whose greedy continuation starts with the answer."""
    hits = sum(greedy_completion(model, tokenizer, p).strip().startswith(a) for p, a in corpus.FACT_PROMPTS)
    return hits / len(corpus.FACT_PROMPTS)


def heldout_sentences(n: int = 400, seed: int = 0) -> list[str]:
    """Held-out fills (never trained on) used for the held-out loss."""
    import random

    pool = sorted(f.text for f in corpus.labelled_fills() if corpus.is_held_out(f))
    return random.Random(seed).sample(pool, min(n, len(pool)))


_THREADS_LOCK = threading.RLock()  # torch's thread count is per process: one build changes it at a time


@contextmanager
def single_threaded_torch() -> Iterator[None]:
    """Run torch's CPU kernels on one thread for the block, restoring the caller's thread count on exit.

    A multi-threaded reduction (a bias gradient, a norm, a mean) adds its partial sums per thread, so
    its rounding depends on the thread count; on one thread every CPU kernel is sequential and gives
    the same bits. (``torch.use_deterministic_algorithms`` is not set: it adds nothing on one CPU
    thread, and being process wide it would make a concurrent CUDA analysis in the same process, e.g.
    another dashboard session, fail on cuBLAS.) The thread count is process wide too, so concurrent
    builds in one process take turns.
    """
    with _THREADS_LOCK:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def train_workers() -> int:
    """Worker threads for the shards: one per usable core, at most :data:`TRAIN_SHARDS` (speed only)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(TRAIN_SHARDS, cores))


def _shard_loss(model: nn.Module, window: torch.Tensor) -> torch.Tensor:
    ids = window[:, :-1]
    # explicit all-ones mask: the demo tokenizer's BOS doubles as pad, which transformers warns about
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))


def batch_gradient(model: nn.Module, params: list[torch.Tensor], batch: torch.Tensor,
                   pool: ThreadPoolExecutor | None = None) -> tuple[float, list[torch.Tensor]]:
    """Mean loss and its gradient over ``batch``, as the mean over :data:`TRAIN_SHARDS` equal shards.

    Each shard's gradient comes from its own ``torch.autograd.grad`` (nothing accumulates into ``.grad``
    concurrently) and the shards are summed in a fixed order, so ``pool`` (several workers) or no pool
    (the calling thread) give the same bits. Call it inside :func:`single_threaded_torch`.
    """
    shards = batch.chunk(TRAIN_SHARDS)

    def one(window: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        loss = _shard_loss(model, window)
        return loss.detach(), torch.autograd.grad(loss, params)

    results = list(pool.map(one, shards)) if pool is not None else [one(w) for w in shards]
    loss = sum(float(r[0]) for r in results) / TRAIN_SHARDS  # reported only
    grads = [g.clone() for g in results[0][1]]
    for _, shard_grads in results[1:]:
        for total, g in zip(grads, shard_grads):
            total.add_(g)
    for g in grads:
        g.div_(TRAIN_SHARDS)
    return loss, grads


def train(cfg: DemoConfig, seed: int = 0, steps: int | None = None, progress: ProgressFn | None = None,
          workers: int | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, torch.Tensor]:
    """Corpus, tokenizer and a trained model for ``cfg``; returns (model, tokenizer, train_stream).

    ``workers`` (default :func:`train_workers`) only changes the speed, never the weights.
    """
    from transformers import AutoModelForCausalLM

    if cfg.batch % TRAIN_SHARDS:
        raise ValueError(f"batch {cfg.batch} does not split into {TRAIN_SHARDS} equal shards")
    report = progress or (lambda f, m: None)
    steps = cfg.steps if steps is None else steps
    workers = train_workers() if workers is None else workers
    report(0.0, "Generating the corpus")
    sentences = list(corpus.sample_corpus(cfg.n_sentences, seed=seed))
    report(0.02, "Training the tokenizer")
    tokenizer = train_tokenizer(sorted(set(corpus.training_pool())))
    stream = _token_stream(tokenizer, sentences)
    config = make_config(cfg, len(tokenizer), tokenizer.bos_token_id)
    pool_context = ThreadPoolExecutor(workers, thread_name_prefix="lldd-demo") if workers > 1 else nullcontext()
    with single_threaded_torch(), pool_context as pool:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.01)
        gen = torch.Generator().manual_seed(seed)
        n_windows = len(stream) - cfg.seq_len - 1
        for step in range(steps):
            starts = torch.randint(0, n_windows, (cfg.batch,), generator=gen)
            batch = torch.stack([stream[s : s + cfg.seq_len + 1] for s in starts.tolist()])
            for group in opt.param_groups:
                group["lr"] = _lr(step, steps, cfg.lr)
            loss, grads = batch_gradient(model, params, batch, pool)
            for p, g in zip(params, grads):
                p.grad = g
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if step % 10 == 0 or step == steps - 1:
                report(0.05 + 0.85 * (step + 1) / steps, f"Training {cfg.name}: step {step + 1}/{steps}, loss {loss:.3f}")
    model.eval()
    return model, tokenizer, stream


def build_demo(name: str = DEFAULT_DEMO, seed: int = 0, steps: int | None = None, progress: ProgressFn | None = None,
               target: Path | None = None) -> DemoInfo:
    """Build demo model ``name`` into ``target`` (default :func:`demo_path`) and return its info."""
    if name not in DEMO_CONFIGS:
        raise KeyError(name)
    cfg = DEMO_CONFIGS[name]
    report = progress or (lambda f, m: None)
    t0 = time.perf_counter()
    model, tokenizer, stream = train(cfg, seed=seed, steps=steps, progress=report)
    report(0.92, "Evaluating")
    held = heldout_sentences()
    target = Path(target) if target is not None else demo_path(name)
    with single_threaded_torch():  # the reported figures, too, are the same on any thread count
        info = DemoInfo(
            name=name,
            path=str(target),
            arch=cfg.arch,
            size=cfg.size,
            parameters=int(sum(p.numel() for p in model.parameters())),
            heldout_loss=mean_loss(model, tokenizer, held),
            unigram_loss=unigram_loss(tokenizer, stream, held, len(tokenizer)),
            fact_accuracy=fact_accuracy(model, tokenizer),
            build_seconds=0.0,
            seed=seed,
            steps=cfg.steps if steps is None else steps,
        )
    report(0.97, "Saving")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        info.build_seconds = time.perf_counter() - t0
        (tmp / META_FILE).write_text(json.dumps(asdict(info), indent=2))
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(1.0, f"Built {name}")
    return info
