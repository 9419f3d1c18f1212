"""Built-in concept datasets, made by the corpus generator from fills the demo models never saw.

Each dataset has two classes; ``label`` is 1 for the first-named class (positive, polite, sport,
true) and 0 for the other. They are stored as JSONL (``text``, ``label``) in ``lldd_core/data``,
with ``manifest.json`` naming the classes; ``python -m lldd_core.demo.datasets`` regenerates them
(deterministically) and the tests check the stored files equal a fresh generation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from . import corpus

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@dataclass(frozen=True)
class BuiltinDataset:
    name: str
    description: str
    classes: tuple[str, str]  # (label 1, label 0)
    fills: Callable[[], list[corpus.Fill]]


def _held_out(domain_fills: Callable[[], list[corpus.Fill]]) -> Callable[[], list[corpus.Fill]]:
    return lambda: [f for f in domain_fills() if corpus.is_held_out(f) and f.label is not None]


BUILTIN: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset("sentiment", "Product and restaurant reviews, positive vs negative", ("positive", "negative"),
                       _held_out(corpus.review_fills)),
        BuiltinDataset("politeness", "Requests, polite vs rude", ("polite", "rude"), _held_out(corpus.request_fills)),
        BuiltinDataset("topic", "Narrative sentences about sport vs cooking", ("sport", "cooking"),
                       _held_out(corpus.narrative_fills)),
        BuiltinDataset("truth", "Simple world-fact claims, true vs false", ("true", "false"), corpus.claim_fills),
    )
}


def generate(name: str, seed: int = 0) -> list[dict]:
    """The rows of built-in dataset ``name``: ``{"text", "label"}``, shuffled with ``seed``."""
    spec = BUILTIN[name]
    rows = [{"text": f.text, "label": int(f.label == spec.classes[0])} for f in spec.fills()]
    rows.sort(key=lambda r: (r["text"], r["label"]))
    random.Random(seed).shuffle(rows)
    return rows


def path_of(name: str) -> Path:
    return DATA_DIR / f"{name}.jsonl"


def load(name: str) -> list[dict]:
    """The stored rows of built-in dataset ``name``."""
    if name not in BUILTIN:
        raise KeyError(name)
    with path_of(name).open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def manifest() -> dict[str, dict]:
    return {
        d.name: {"description": d.description, "classes": {"1": d.classes[0], "0": d.classes[1]},
                 "file": path_of(d.name).name}
        for d in BUILTIN.values()
    }


def write_all(directory: Path = DATA_DIR) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name in BUILTIN:
        with (directory / f"{name}.jsonl").open("w", encoding="utf-8") as fh:
            for row in generate(name):
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    (directory / "manifest.json").write_text(json.dumps(manifest(), indent=2) + "\n")


if __name__ == "__main__":
    write_all()
    for name in BUILTIN:
        rows = load(name)
        print(f"{name}: {len(rows)} rows, {sum(r['label'] for r in rows)} with label 1")
