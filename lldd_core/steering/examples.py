"""Example prompts per built-in concept dataset (``lldd_core/data/examples.json``): the Steering page's picks.

Each list holds texts of the class steering moves away from (label 0: negative, rude, cooking, false),
begun but not finished, so the model writes the part that carries the concept. They are not rows of the
datasets (the sentiment ones are prefixes of demo training reviews; the datasets hold held-out fills).
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

PATH = Path(__file__).resolve().parent.parent / "data" / "examples.json"


@cache
def _all() -> dict[str, tuple[str, ...]]:
    raw = json.loads(PATH.read_text(encoding="utf-8"))
    return {name: tuple(texts) for name, texts in raw.items() if not name.startswith("_")}


def examples(dataset: str | None) -> tuple[str, ...]:
    """The example prompts of the built-in dataset ``dataset`` (none for other or no datasets)."""
    return _all().get(dataset or "", ())
