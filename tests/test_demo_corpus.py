"""The corpus generator and the built-in concept datasets."""

from __future__ import annotations

from collections import Counter

import pytest

from lldd_core.demo import corpus, datasets


def test_corpus_is_deterministic_and_varied():
    a = list(corpus.sample_corpus(2000, seed=3))
    assert a == list(corpus.sample_corpus(2000, seed=3))
    assert a != list(corpus.sample_corpus(2000, seed=4))
    assert len(set(a)) > 1000  # structure to learn, not one sentence
    domains = Counter(f.domain for f in corpus.labelled_fills())
    assert set(domains) == {"review", "request", "narrative", "statement"}


def test_fact_prompts_are_trained_on():
    pool = set(corpus.training_pool())
    for prompt, answer in corpus.FACT_PROMPTS:
        assert any(s.startswith(f"{prompt} {answer}") for s in pool), prompt


@pytest.mark.parametrize("name", sorted(datasets.BUILTIN))
def test_builtin_dataset(name):
    rows = datasets.load(name)
    counts = Counter(r["label"] for r in rows)
    assert set(counts) == {0, 1} and min(counts.values()) >= 500
    assert all(set(r) == {"text", "label"} and r["text"].strip() for r in rows)
    assert len({r["text"] for r in rows}) == len(rows)
    # made from held-out fills: not one sentence the models were trained on
    assert not {r["text"] for r in rows} & set(corpus.training_pool())
    # the stored file is exactly what the generator makes
    assert rows == datasets.generate(name)


def test_manifest_names_the_classes():
    m = datasets.manifest()
    assert m["sentiment"]["classes"] == {"1": "positive", "0": "negative"}
    assert set(m) == {"sentiment", "politeness", "topic", "truth"}
