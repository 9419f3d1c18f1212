"""Concept datasets: registry, built-in / hub / user-file loading, balanced splits, class directions.

Nothing here goes online: the datasets library is kept in offline mode and pointed at a fresh,
empty cache (or at a cache these tests write in the layout ``datasets`` reads offline).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import lldd_core.concepts as concepts_package
from lldd_core.concepts import catalog, registry
from lldd_core.concepts import files as user_files
from lldd_core.concepts.catalog import list_datasets, load
from lldd_core.concepts.data import MIN_PER_CLASS, MIN_PER_SPLIT, ConceptData, DatasetUnavailableError
from lldd_core.concepts.directions import class_directions
from lldd_core.concepts.files import load_user_file
from lldd_core.concepts.splits import split, split_sizes
from lldd_core.demo import datasets as builtin
from lldd_core.errors import InputError, NumericalError

PAPER_TASKS = {
    "amazon_polarity": ("fancyzhx/amazon_polarity", None, ("title", "content"), "label"),
    "yelp_polarity": ("fancyzhx/yelp_polarity", None, ("text",), "label"),
    "sst2": ("stanfordnlp/sst2", None, ("sentence",), "label"),
    "imdb": ("stanfordnlp/imdb", None, ("text",), "label"),
    "boolq": ("google/boolq", None, ("question", "passage"), "answer"),
    "mnli": ("nyu-mll/glue", "mnli", ("premise", "hypothesis"), "label"),
    "civil_comments": ("google/civil_comments", None, ("text",), "toxicity"),
    "tweet_eval_irony": ("cardiffnlp/tweet_eval", "irony", ("text",), "label"),
    "tweet_eval_hate": ("cardiffnlp/tweet_eval", "hate", ("text",), "label"),
    "tweet_eval_offensive": ("cardiffnlp/tweet_eval", "offensive", ("text",), "label"),
}


@pytest.fixture(autouse=True)
def offline_empty_cache(tmp_path, monkeypatch) -> Path:
    """Every test: datasets offline (whatever it read at import) and an empty datasets cache."""
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    cache = tmp_path / "hf_datasets_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(cache))
    return cache


def make_data(n1: int, n0: int, name: str = "toy") -> ConceptData:
    texts = [f"one {i}" for i in range(n1)] + [f"zero {i}" for i in range(n0)]
    labels = np.array([1] * n1 + [0] * n0)
    order = np.random.default_rng(123).permutation(len(texts))
    return ConceptData(name, "test", tuple(texts[i] for i in order), labels[order], ("yes", "no"))


def write_hub_cache(cache: Path, hub_id: str, config_dir: str, split_name: str, rows: list[dict], tmp: Path) -> None:
    """Put ``rows`` into ``cache`` as ``datasets`` stores a prepared hub dataset
    (``<ns>___<name>/<config>/<version>/<hash>/{dataset_info.json, <name>-<split>.arrow}``)."""
    import datasets

    src = tmp / f"src_{config_dir}_{split_name}.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in rows))
    build = tmp / f"build_{config_dir}_{split_name}"
    datasets.load_dataset("json", data_files={split_name: str(src)}, cache_dir=str(build))
    (info_file,) = build.glob("json/*/*/*/dataset_info.json")
    ns, name = hub_id.split("/")
    target = cache / f"{ns}___{name}" / config_dir / "0.0.0" / "0123456789abcdef"
    target.mkdir(parents=True)
    for f in info_file.parent.iterdir():
        shutil.copy(f, target / f.name.replace("json-", f"{name}-"))
    info = json.loads((target / "dataset_info.json").read_text())
    info.update(config_name=config_dir, builder_name=name, dataset_name=name)
    (target / "dataset_info.json").write_text(json.dumps(info))


# ---------------------------------------------------------------------------------------------- registry


def test_registry_lists_all_fourteen(offline_empty_cache):
    names = registry.dataset_names()
    assert names == ["sentiment", "politeness", "topic", "truth", *PAPER_TASKS]
    rows = list_datasets()
    assert [r.name for r in rows] == names
    by = {r.name: r for r in rows}
    for name in builtin.BUILTIN:
        assert by[name].source == "builtin" and by[name].available_offline
        assert by[name].size == len(builtin.load(name))
        assert by[name].classes == builtin.BUILTIN[name].classes
    for name in PAPER_TASKS:  # empty cache: none is available offline, sizes as published
        assert by[name].source == "hub" and not by[name].available_offline
        assert by[name].size and by[name].size > 0
    table = catalog.format_listing(rows)
    assert all(name in table for name in names) and "offline" in table.splitlines()[0]
    assert json.loads(json.dumps([r.as_dict() for r in rows]))[0]["classes"] == {"1": "positive", "0": "negative"}


def test_hub_entries_match_the_references_table():
    for name, (hub_id, config, text_fields, label_field) in PAPER_TASKS.items():
        hub = registry.REGISTRY[name].hub
        assert (hub.hub_id, hub.config, hub.text_fields, hub.label_field) == (hub_id, config, text_fields, label_field)
    assert registry.REGISTRY["mnli"].classes == ("entailment", "contradiction")
    assert registry.REGISTRY["civil_comments"].classes[0] == "toxic"
    assert registry.REGISTRY["boolq"].hub.label_rule == "bool"


def test_unknown_dataset_names_the_known_ones():
    with pytest.raises(InputError, match="unknown dataset 'nope'.*sentiment.*tweet_eval_offensive"):
        load("nope")


@pytest.mark.parametrize("name", list(builtin.BUILTIN))
def test_builtins_load_with_their_classes(name):
    data = load(name)
    rows = builtin.load(name)
    manifest = builtin.manifest()[name]["classes"]
    assert data.classes == (manifest["1"], manifest["0"])
    assert data.texts == tuple(r["text"] for r in rows)
    assert data.labels.dtype == np.int64 and set(data.labels.tolist()) == {0, 1}
    assert data.labels.tolist() == [r["label"] for r in rows]
    assert min(data.class_counts()) >= MIN_PER_CLASS and data.source == f"builtin:{name}"


def test_builtin_sentiment_label_one_is_positive():
    data = load("sentiment")
    assert data.classes[0] == "positive"
    # generated from the corpus: label 1 rows are the fills labelled with the first-named class
    fills = {f.text: f.label for f in builtin.BUILTIN["sentiment"].fills()}
    assert all((fills[t] == "positive") == bool(y) for t, y in zip(data.texts, data.labels))


# ---------------------------------------------------------------------------------------------- hub


@pytest.mark.parametrize("name", ["sst2", "tweet_eval_irony", "mnli"])
def test_hub_dataset_not_cached_offline_gives_a_clear_error(name):
    start = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as info:
        load(name)
    assert time.monotonic() - start < 60
    msg = str(info.value)
    assert f"dataset {name!r}" in msg and "not available offline" in msg
    assert "network" in msg and "HF_DATASETS_CACHE" in msg and registry.REGISTRY[name].hub.hub_id in msg
    assert isinstance(info.value, InputError)


def test_hub_id_that_cannot_be_cached(monkeypatch):
    entry = registry.REGISTRY["sst2"]
    bogus = registry.DatasetEntry("bogus", "hub", ("a", "b"), "never cached",
                                  registry.HubSource("lldd-tests/certainly-not-a-dataset-7f3a", None, "train",
                                                     ("text",), "label"))
    monkeypatch.setitem(registry.REGISTRY, "bogus", bogus)
    with pytest.raises(DatasetUnavailableError, match="certainly-not-a-dataset-7f3a.*not available offline"):
        load("bogus")
    assert registry.REGISTRY["sst2"] is entry


def test_other_config_cached_still_gives_the_clear_error(offline_empty_cache, tmp_path):
    write_hub_cache(offline_empty_cache, "cardiffnlp/tweet_eval", "hate", "train",
                    [{"text": f"t{i}", "label": i % 2} for i in range(10)], tmp_path)
    with pytest.raises(DatasetUnavailableError, match="not available offline"):
        load("tweet_eval_irony")


def test_hub_dataset_from_the_local_cache_offline(offline_empty_cache, tmp_path):
    # MNLI: 0 entailment -> 1, 2 contradiction -> 0, neutral dropped; premise + hypothesis joined
    rows = [{"premise": f"p{i}", "hypothesis": f"h{i}", "label": i % 3, "idx": i} for i in range(60)]
    write_hub_cache(offline_empty_cache, "nyu-mll/glue", "mnli", "validation_matched", rows, tmp_path)
    by = {r.name: r for r in list_datasets()}
    assert by["mnli"].available_offline and by["mnli"].size == 60
    data = load("mnli")
    assert data.class_counts() == (20, 20) and data.classes == ("entailment", "contradiction")
    expected = {f"p{i}\nh{i}": int(i % 3 == 0) for i in range(60) if i % 3 != 1}
    assert dict(zip(data.texts, data.labels.tolist())) == expected
    assert data.source == "hub:nyu-mll/glue/mnli:validation_matched"

    small = load("mnli", max_per_class=5, seed=3)
    assert small.class_counts() == (5, 5) and set(small.texts) <= set(expected)
    assert load("mnli", max_per_class=5, seed=3).texts == small.texts
    with pytest.raises(InputError, match="no split 'train'"):
        load("mnli", hub_split="train")


def test_hub_label_rules_bool_threshold_and_single_config(offline_empty_cache, tmp_path):
    write_hub_cache(offline_empty_cache, "google/boolq", "default", "train",
                    [{"question": f"q{i}", "passage": f"p{i}", "answer": bool(i % 2)} for i in range(12)], tmp_path)
    boolq = load("boolq")
    assert dict(zip(boolq.texts, boolq.labels.tolist())) == {f"q{i}\np{i}": i % 2 for i in range(12)}
    assert boolq.classes == ("yes", "no")

    scores = [0.0, 0.49, 0.5, 0.9, 0.1, 0.7, 0.2, 0.55, 0.3, 1.0]
    write_hub_cache(offline_empty_cache, "google/civil_comments", "default", "validation",
                    [{"text": f"c{i}", "toxicity": s} for i, s in enumerate(scores)], tmp_path)
    civil = load("civil_comments")
    assert dict(zip(civil.texts, civil.labels.tolist())) == {f"c{i}": int(s >= 0.5) for i, s in enumerate(scores)}

    # a repository whose single config is not called "default"; empty titles leave the content
    rows = [{"title": "" if i == 0 else f"T{i}", "content": f"C{i}", "label": i % 2} for i in range(10)]
    write_hub_cache(offline_empty_cache, "fancyzhx/amazon_polarity", "amazon_polarity", "test", rows, tmp_path)
    assert {r.name: r for r in list_datasets()}["amazon_polarity"].available_offline
    amazon = load("amazon_polarity")
    assert amazon.texts[0] == "C0" and amazon.texts[1] == "T1\nC1"


def test_hub_cache_with_too_few_examples(offline_empty_cache, tmp_path):
    write_hub_cache(offline_empty_cache, "stanfordnlp/sst2", "default", "train",
                    [{"sentence": f"s{i}", "label": int(i < 2), "idx": i} for i in range(10)], tmp_path)
    with pytest.raises(InputError, match="2 example\\(s\\) of class 'positive'; each class needs at least 4"):
        load("sst2")


# ---------------------------------------------------------------------------------------------- user files

CSV = "text,label,extra\ngood film,1,x\nbad film,0,y\nnice day,1,z\nawful day,0,w\n" \
      "great,1,a\nterrible,0,b\nlovely,1,c\nhorrid,0,d\n"


def test_user_csv_from_bytes_path_and_stream(tmp_path):
    data = load_user_file(CSV.encode(), filename="reviews.csv")
    assert data.texts[:2] == ("good film", "bad film") and data.labels.tolist() == [1, 0] * 4
    assert data.classes == ("1", "0") and data.name == "reviews" and data.source == "upload:reviews.csv"
    path = tmp_path / "reviews.csv"
    path.write_text(CSV)
    from_path = load_user_file(path)
    assert from_path.texts == data.texts and from_path.labels.tolist() == data.labels.tolist()
    assert from_path.source == f"file:{path}" and from_path.name == "reviews"
    assert load_user_file(b"\n\n" + CSV.encode()).texts == data.texts  # blank lines before the header
    tsv = tmp_path / "reviews.tsv"
    tsv.write_text(CSV.replace(",", "\t"))
    assert load_user_file(tsv, name="mine").name == "mine"
    assert load_user_file(str(path)).fingerprint() == data.fingerprint()
    stream = io.BytesIO(CSV.encode())
    assert load_user_file(stream, filename="r.csv").texts == data.texts
    # no file name: sniffed; BOM, CRLF, quoted commas and newlines, other separators
    tricky = '\ufefftext,label\r\n"hello, world",1\r\n"two\nlines",0\r\nc,1\r\nd,0\r\ne,1\r\nf,0\r\ng,1\r\nh,0\r\n'
    t = load_user_file(tricky.encode("utf-8"))
    assert t.texts[:2] == ("hello, world", "two\nlines")
    assert load_user_file(CSV.replace(",", ";").encode()).texts == data.texts
    assert load_user_file(CSV.replace(",", "\t").encode(), filename="x.tsv").texts == data.texts
    assert load_user_file(CSV.replace("text,label", "Text, Label").encode()).texts == data.texts


def test_user_jsonl_from_bytes_and_path(tmp_path):
    rows = [{"text": f"t{i}", "label": i % 2 == 0} for i in range(10)]
    blob = "\n".join(json.dumps(r) for r in rows).encode()
    data = load_user_file(blob, filename="x.jsonl")
    assert data.classes == ("true", "false") and data.labels.tolist() == [1, 0] * 5
    path = tmp_path / "data.jsonl"
    path.write_bytes(blob + b"\n\n")
    assert load_user_file(path).texts == data.texts
    assert load_user_file(blob).texts == data.texts  # sniffed as JSON
    assert load_user_file(json.dumps(rows).encode(), filename="x.json").texts == data.texts  # JSON array


def test_user_label_rule():
    def rows(labels):
        return "\n".join(json.dumps({"text": f"t{i}", "label": y}) for i, y in enumerate(labels)).encode()

    strings = load_user_file(rows(["positive", "negative"] * 4))
    assert strings.classes == ("positive", "negative") and strings.labels.tolist() == [1, 0] * 4
    flipped = load_user_file(rows(["positive", "negative"] * 4), positive="negative")
    assert flipped.classes == ("negative", "positive") and flipped.labels.tolist() == [0, 1] * 4
    assert load_user_file(rows([-1, 1] * 4)).labels.tolist() == [0, 1] * 4
    assert load_user_file(rows(["1", 0, 1.0, "0"] * 2)).labels.tolist() == [1, 0, 1, 0] * 2
    named = load_user_file(rows([1, 0] * 4), class_names=("spam", "ham"))
    assert named.classes == ("spam", "ham") and named.labels.tolist() == [1, 0] * 4
    csv_bool = load_user_file(b"text,label\n" + b"".join(f"t{i},{'True' if i % 2 else 'false'}\n".encode()
                                                          for i in range(8)))
    assert csv_bool.classes == ("true", "false") and csv_bool.labels.tolist() == [0, 1] * 4


@pytest.mark.parametrize(
    ("blob", "kwargs", "pattern"),
    [
        (b"text,label\n" + b"a,1\n" * 6, {}, "every row has label '1'; a concept dataset needs two classes"),
        (b"sentence,y\na,1\nb,0\n", {}, "2 field\\(s\\) and no 'text' or 'label' column"),  # not what it holds
        (b'{"sentence": "a", "label": 1}\n', {}, "keys 'text' and 'label'; it has 2 key\\(s\\) and no 'text'$"),
        (b"text,label\n" + b"a,1\n" * 6 + b"b,0\n" * 3, {}, "3 example\\(s\\) of class '0'; each class needs at least 4"),
        (b"text,label\n" + b"a,1\nb,0\nc,2\n" * 3, {}, "exactly two values, found 3: '1', '0', '2'"),
        (b"text,label\na,1\nb,\nc,0\n", {}, "line 3 has no label"),
        (b'{"text": "a", "label": [1]}\n', {}, "label of type list"),
        (b'{"text": "a", "label": NaN}\n', {}, "label nan"),
        (b"text,label\n" + b"a,x\nb,y\n" * 4, {"positive": "z"}, "positive='z' is not one of the labels"),
        (b'{"text": "a", "label": 1}\n{"text": "b", "label": 0\n', {}, "line 2 is not valid JSON"),
        (b"[1, 2]", {}, "item 1 is not a JSON object"),
        (b"text,label\n,1\n", {}, "line 2 has an empty or non-text 'text'"),
        (b'{"text": 5, "label": 1}\n', {}, "non-text 'text'"),
        (b"text,label\n\xff\xfe,1\n", {}, "not UTF-8"),
        (b"   \n", {}, "is empty"),
        (b"text,label\n", {}, "has no data rows"),
        (b"text,label\n" + b"a,1\nb,0\n" * 4, {"class_names": ("x", "")}, "class_names must be two non-empty"),
    ],
)
def test_user_file_errors_say_what_to_do(blob, kwargs, pattern):
    with pytest.raises(InputError, match=pattern):
        load_user_file(blob, filename="data" + (".jsonl" if blob.lstrip()[:1] in (b"{", b"[") else ".csv"), **kwargs)


def test_user_file_size_and_row_caps(tmp_path, monkeypatch):
    big = tmp_path / "big.csv"
    with big.open("wb") as fh:  # sparse: the cap is checked before reading
        fh.truncate(user_files.MAX_FILE_BYTES + 1)
    with pytest.raises(InputError, match="big.csv is 50.0 MB; files must be at most 50 MB"):
        load_user_file(big)
    with pytest.raises(InputError, match="larger than 50 MB"):
        load_user_file(b"x" * (user_files.MAX_FILE_BYTES + 1), filename="up.csv")
    monkeypatch.setattr(user_files, "MAX_ROWS", 10)
    many = b"text,label\n" + b"a,1\nb,0\n" * 6
    with pytest.raises(InputError, match="more than 10 rows"):
        load_user_file(many)
    with pytest.raises(InputError, match="more than 10 rows"):
        load_user_file(b"\n".join(b'{"text": "a", "label": %d}' % (i % 2) for i in range(11)))
    with pytest.raises(InputError, match="no such file"):
        load_user_file(tmp_path / "missing.csv")


# ---------------------------------------------------------------------------------------------- splits


def test_splits_are_disjoint_balanced_and_deterministic():
    data = make_data(1000, 1300)
    s = split(data, n_concept=40, n_operating=20, n_eval=10, seed=7)
    assert s.per_class == s.requested == {"concept": 40, "operating": 20, "evaluation": 10} and not s.shrunk
    parts = {"concept": s.concept, "operating": s.operating, "evaluation": s.evaluation}
    for name, part in parts.items():
        n = s.per_class[name]
        assert part.class_counts() == (n, n) and len(s.indices[name]) == 2 * n
        assert part.texts == tuple(data.texts[i] for i in s.indices[name])
        assert part.labels.tolist() == data.labels[s.indices[name]].tolist()
        assert part.classes == data.classes
    all_idx = np.concatenate(list(s.indices.values()))
    assert len(set(all_idx.tolist())) == len(all_idx)
    assert not (set(s.concept.texts) & set(s.operating.texts) | set(s.concept.texts) & set(s.evaluation.texts)
                | set(s.operating.texts) & set(s.evaluation.texts))
    again = split(data, n_concept=40, n_operating=20, n_eval=10, seed=7)
    assert all(np.array_equal(s.indices[k], again.indices[k]) for k in s.indices)
    other = split(data, n_concept=40, n_operating=20, n_eval=10, seed=8)
    assert not np.array_equal(s.indices["concept"], other.indices["concept"])
    assert 0 < s.concept.labels[:20].sum() < 20  # classes interleaved, not in blocks


def test_paper_defaults_and_shrinking():
    big = split(make_data(900, 850))
    assert big.per_class == {"concept": 400, "operating": 200, "evaluation": 200}
    small = split(make_data(40, 55))  # the default request is fitted to the data: asked for, not shrunk
    assert small.per_class == {"concept": 20, "operating": 10, "evaluation": 10}
    assert small.fitted and not small.shrunk
    assert small.describe() == ("20/10/10 per class (concept/operating/evaluation): the default 400/200/200 "
                                "fitted to the 40 examples of the smaller class of 'toy'")
    assert small.concept.class_counts() == (20, 20)
    chosen = split(make_data(40, 55), n_concept=30, n_operating=20, n_eval=10)  # the user's sizes do not fit
    assert chosen.shrunk and not chosen.fitted and chosen.per_class == {"concept": 20, "operating": 13, "evaluation": 6}
    assert "shrunk from 30/20/10" in chosen.describe() and "only 40 examples" in chosen.describe()
    tiny = split(make_data(4, 9))
    assert tiny.per_class == {"concept": 2, "operating": 1, "evaluation": 1}
    with pytest.raises(InputError, match="cannot be split.*3 example\\(s\\).*at least 4 per class.*3 'yes' and 9 'no'"):
        split(make_data(3, 9))
    with pytest.raises(InputError, match="concept split needs at least 2"):
        split(make_data(10, 10), n_concept=1)
    with pytest.raises(InputError, match="evaluation split needs at least 1"):
        split(make_data(10, 10), n_eval=0)


def test_split_sizes_rule():
    requested = {"concept": 400, "operating": 200, "evaluation": 200}
    for available in range(4, 900, 7):
        sizes = split_sizes(available, requested)
        assert sum(sizes.values()) <= available
        assert all(sizes[k] >= MIN_PER_SPLIT[k] for k in sizes)
        if available >= 800:
            assert sizes == requested
        else:
            assert sizes == {k: max(MIN_PER_SPLIT[k], available * n // 800) for k, n in requested.items()}
    lopsided = split_sizes(5, {"concept": 1000, "operating": 1, "evaluation": 1})
    assert lopsided == {"concept": 3, "operating": 1, "evaluation": 1}
    with pytest.raises(InputError, match="at least 4 per class"):
        split_sizes(3, requested)


@pytest.mark.parametrize("name", list(builtin.BUILTIN))
def test_the_default_sizes_fit_every_builtin_dataset(name: str) -> None:
    """The default request on a built-in dataset gives the largest balanced 2:1:1 splits it holds, without
    a "too small" note (no built-in set has the paper's 800 per class)."""
    from lldd_core.analysis.settings import GainsSettings
    from lldd_core.concepts.splits import default_sizes

    data = load(name)
    available = min(data.class_counts())
    n_concept, n_operating, n_eval = GainsSettings().sizes  # what every analysis asks for by default
    s = split(data, n_concept=n_concept, n_operating=n_operating, n_eval=n_eval)
    assert not s.shrunk and "shrunk" not in s.describe() and "too" not in s.describe()
    assert s.per_class == default_sizes(available)
    used = s.per_class
    assert used["concept"] >= 2 * used["operating"] - 1 and used["operating"] == used["evaluation"]
    assert available - 4 < sum(used.values()) <= available  # as large as the proportions allow
    assert f"{used['concept']}/{used['operating']}/{used['evaluation']} per class" in s.describe()


def test_builtin_split_runs():
    s = split(load("topic"), seed=1)
    assert s.concept.class_counts()[0] == s.per_class["concept"] > 100


# ---------------------------------------------------------------------------------------------- directions


def test_directions_equal_the_normalized_mean_difference():
    rng = np.random.default_rng(0)
    n, layers, d = 30, 4, 6
    labels = np.array([1] * 12 + [0] * 18)
    states = rng.normal(size=(n, layers, d)) + labels[:, None, None] * rng.normal(size=(layers, d))
    v = class_directions(states, labels)
    diff = states[labels == 1].mean(0) - states[labels == 0].mean(0)
    expected = diff / np.linalg.norm(diff, axis=-1, keepdims=True)
    assert isinstance(v, np.ndarray) and v.shape == (layers, d) and v.dtype == np.float64
    np.testing.assert_allclose(v, expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=1e-12)

    t = class_directions(torch.tensor(states, dtype=torch.float32), torch.tensor(labels))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert class_directions(states.astype(np.float32), labels.tolist()).dtype == np.float32


def test_directions_constructed_exactly():
    # class 1 at +e_l, class 0 at -e_l (plus noise that averages to zero): direction e_l
    d, layers = 5, 3
    base = np.zeros((layers, d))
    base[np.arange(layers), np.arange(layers)] = 2.0
    noise = np.array([1.0, -1.0])[:, None, None] * np.ones((1, layers, d))
    states = np.concatenate([base + noise, base - noise, -base + noise, -base - noise])
    v = class_directions(states, np.array([1, 1, 1, 1, 0, 0, 0, 0]))
    np.testing.assert_allclose(v, np.eye(d)[:layers], atol=1e-15)


def test_directions_errors():
    states = np.random.default_rng(1).normal(size=(6, 3, 4))
    states[:, 0] = 1.0  # identical at layer 0
    labels = np.array([1, 0, 1, 0, 1, 0])
    with pytest.raises(NumericalError, match="identical at layer\\(s\\) \\[0\\].*allow_zero=True"):
        class_directions(states, labels)
    v = class_directions(states, labels, allow_zero=True)
    assert np.all(v[0] == 0) and np.allclose(np.linalg.norm(v[1:], axis=-1), 1)
    with pytest.raises(InputError, match="both classes"):
        class_directions(states, np.ones(6, dtype=int))
    with pytest.raises(InputError, match="one entry per example"):
        class_directions(states, labels[:5])
    with pytest.raises(InputError, match="0 or 1"):
        class_directions(states, labels * 2)
    with pytest.raises(InputError, match="shape \\[N, n_layers\\+1, d\\]"):
        class_directions(states[:, 0], labels)
    bad = states.copy()
    bad[2, 1, 1] = np.nan
    with pytest.raises(NumericalError, match="NaN or Inf"):
        class_directions(bad, labels)


# ---------------------------------------------------------------------------------------------- misc


def test_concept_data_validation_and_fingerprint():
    data = make_data(5, 5)
    assert not data.labels.flags.writeable
    with pytest.raises(ValueError):
        ConceptData("x", "t", ("a", "b"), np.array([1]), ("p", "n"))
    with pytest.raises(ValueError):
        ConceptData("x", "t", ("a", "b"), np.array([1, 2]), ("p", "n"))
    renamed = ConceptData("other", "elsewhere", data.texts, data.labels, data.classes)
    assert renamed.fingerprint() == data.fingerprint()
    flipped = ConceptData("x", "t", data.texts, 1 - data.labels, data.classes)
    assert flipped.fingerprint() != data.fingerprint()


def test_concepts_modules_never_import_streamlit():
    modules = sorted(Path(concepts_package.__file__).parent.glob("*.py"))
    assert len(modules) > 1
    for module in modules:
        assert "streamlit" not in module.read_text(), module.name
