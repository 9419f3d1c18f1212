"""Degeneration: whether a generated text loops, i.e. repeats a 3-gram of model tokens.

A continuation *loops* when some run of ``N_GRAM = 3`` consecutive tokens occurs twice or more in it
("Worth every Worth every" is `` W``, ``orth``, `` every`` twice). Strong steering drives a model into
such loops long before it changes what the text says; the steering result flags them and the page warns.
"""

from __future__ import annotations

from collections.abc import Sequence

N_GRAM = 3


def repeated_ngram(tokens: Sequence[str], n: int = N_GRAM) -> str:
    """The first ``n``-gram of ``tokens`` (token strings) that occurs again later, joined; ``""`` if none.

    Tokens that are only whitespace are left out, so spacing alone never makes (or hides) a loop.
    """
    kept = [t for t in tokens if t.strip()]
    seen: set[tuple[str, ...]] = set()
    for i in range(len(kept) - n + 1):
        gram = tuple(kept[i:i + n])
        if gram in seen:
            return "".join(gram)
        seen.add(gram)
    return ""
