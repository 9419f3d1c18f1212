"""Cache keys pinned: the (analysis name, parameters) every cached analysis hands to ``make_key``.

Written before the core's reorganisation (issue 15): a result cached by today's code must still be a
hit afterwards, so any change of an analysis name, a parameter's name, type, default or order of
items makes this test fail. The service's ``make_key`` is replaced by a recorder that stops the call
right after the key is built (nothing is computed). The model id and its revision (a hash of the
weights) are left out of the pins; ``make_key``'s hashing is pinned on synthetic payloads instead.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lldd_core
from lldd_core import service as service_module
from lldd_core.concepts.data import ConceptData
from lldd_core.models.loading import ModelSpec
from lldd_core.service import Service
from lldd_core.steering.generate import GenerationSettings
from lldd_core.steering.methods.additive import AdditiveParams
from lldd_core.steering.methods.jacobian import JacobianParams
from lldd_core.steering.methods.llv import LLVParams
from lldd_core.steering.methods.lqr import LQRParams
from lldd_core.store import keys as cache_keys
from tests.tiny import PROMPT, save_tiny

#: A fixed concept (its fingerprint is part of the gains, control, steering and LQR keys).
DATA = ConceptData(name="toy", source="builtin:toy", texts=("good day", "fine film", "bad day", "dull film"),
                   labels=np.array([1, 1, 0, 0]), classes=("negative", "positive"))
FINGERPRINT = "2a9a24fe4fe8e020197d42843baefea4bd326828319716091dcccdd68e21ba90"
STEER_SETTINGS = GenerationSettings(max_new_tokens=4)


class _Stop(Exception):
    """Raised by the recorder once the key is built, so that nothing is looked up or computed."""


def _canonical(params: dict[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    return save_tiny("gpt2", tmp_path_factory.mktemp("keys") / "gpt2")


@pytest.fixture()
def recorded(tiny_gpt2, cache_dir, monkeypatch):
    """``call(fn)`` runs ``fn(service, spec)`` and returns what it passed to ``make_key``."""
    calls: list[dict[str, Any]] = []

    def recorder(analysis: str, **kwargs: Any) -> str:
        calls.append({"analysis": analysis, **kwargs})
        raise _Stop

    monkeypatch.setattr(service_module, "make_key", recorder)
    service = Service()
    spec = ModelSpec(str(tiny_gpt2), dtype="float64")

    def call(fn) -> dict[str, Any]:
        calls.clear()
        with pytest.raises(_Stop):
            fn(service, spec)
        (only,) = calls
        assert only["model"] == spec.model and only["dtype"] == "float64"
        assert isinstance(only["revision"], str) and only["revision"]
        return only

    yield call, service, spec
    service.cache.close()


#: name -> (the call, its analysis name, whether the prompt's ids enter the key, the params' canonical JSON)
CASES: dict[str, tuple[Any, str, bool, str]] = {
    "jacobian": (
        lambda s, m: s.jacobian(m, PROMPT), "jacobian", True,
        '{"final_norm":true,"layer":2}'),
    "jacobian-layer": (
        lambda s, m: s.jacobian(m, PROMPT, layer=1, final_norm=False), "jacobian", True,
        '{"final_norm":false,"layer":1}'),
    "graph": (
        lambda s, m: s.graph(m, PROMPT), "graph", True,
        '{"edge_threshold":0.98,"max_nodes":1024,"n_decode":5,"node_threshold":0.8,"target":null}'),
    "graph-unpruned": (
        lambda s, m: s.graph(m, PROMPT, node_threshold=None, edge_threshold=0.5, max_nodes=None), "graph", True,
        '{"edge_threshold":0.5,"max_nodes":null,"n_decode":5,"node_threshold":null,"target":null}'),
    "graph-intervention": (
        lambda s, m: s.graph_intervention(m, PROMPT, {(1, 2, 7): 0.0, (0, 1, 3): 2.0}, [5, 9]), "graph-intervention",
        True, '{"factors":[[0,1,3,2.0],[1,2,7,0.0]],"targets":[5,9]}'),
    "spectrum": (
        lambda s, m: s.spectrum(m, PROMPT), "spectrum", True,
        '{"final_norm":true,"k":8,"layer":2,"method":"auto","n_decode":8}'),
    "spectrum-options": (
        lambda s, m: s.spectrum(m, PROMPT, layer=1, final_norm=False, k=4, n_decode=3, method="full"),
        "spectrum", True,
        '{"final_norm":false,"k":4,"layer":1,"method":"full","n_decode":3}'),
    "layers": (
        lambda s, m: s.layers(m, PROMPT), "layers", True,
        '{"k":8,"lens":true,"method":"auto","n_decode":5,"sites":["cumulative","block","attention","mlp"]}'),
    "layers-sites": (
        lambda s, m: s.layers(m, PROMPT, k=3, n_decode=2, lens=False, method="matrix_free", sites=("mlp", "cumulative")),
        "layers", True,
        '{"k":3,"lens":false,"method":"matrix_free","n_decode":2,"sites":["cumulative","mlp"]}'),
    "gains": (
        lambda s, m: s.gains(m, DATA), "gains", False,
        '{"complement":"krylov","dataset":"toy","eps":0.1,"fingerprint":"@FP","mode":"prompt","n_eval":32,'
        '"order":32,"seed":0,"sizes":[400,200,200]}'),
    "gains-options": (
        lambda s, m: s.gains(m, DATA, order=8, eps=0.25, n_eval=4, complement="random", mode="population",
                             sizes=(20, 10, 10), seed=3),
        "gains", False,
        '{"complement":"random","dataset":"toy","eps":0.25,"fingerprint":"@FP","mode":"population","n_eval":4,'
        '"order":8,"seed":3,"sizes":[20,10,10]}'),
    "cached-gains": (
        lambda s, m: s.cached_gains(m, DATA), "gains", False,
        '{"complement":"krylov","dataset":"toy","eps":0.1,"fingerprint":"@FP","mode":"prompt","n_eval":32,'
        '"order":32,"seed":0,"sizes":[400,200,200]}'),
    "gains-ablation": (
        lambda s, m: s.gains_ablation(m, DATA, "order", [4, 8]), "gains-ablation", False,
        '{"complement":"krylov","dataset":"toy","eps":0.1,"fingerprint":"@FP","mode":"prompt","n_eval":32,'
        '"order":32,"seed":0,"sizes":[400,200,200],"values":[4,8],"vary":"order"}'),
    "control": (
        lambda s, m: s.control(m, DATA, [0.5, -1.0]), "control", False,
        '{"complement":"krylov","dataset":"toy","eps":0.0,"fingerprint":"@FP","mode":"population","n_eval":16,'
        '"order":32,"seed":0,"sizes":[400,200,200],"targets":[0.5,-1.0],"tol":0.01}'),
    "steer-additive": (
        lambda s, m: s.steer(m, PROMPT, "additive", AdditiveParams(layers=[1], strength=2.0), dataset=DATA,
                             settings=STEER_SETTINGS),
        "steer", True,
        '{"dataset":"toy","dy":null,"fingerprint":"@FP","lam":null,"layers":[1],"method":"additive","order":null,'
        '"positions":"last","prompt":"@PROMPT","q":null,"qf":null,"r":null,"seed":0,'
        '"settings":{"do_sample":false,"max_new_tokens":4,"seed":0,"temperature":1.0,"top_p":1.0},'
        '"sizes":[400,200,200],"steer_text":null,"strength":2.0,"variant":null}'),
    "steer-llv": (
        lambda s, m: s.steer(m, PROMPT, "llv", LLVParams(dy=2.0, order=8), dataset=DATA, settings=STEER_SETTINGS),
        "steer", True,
        '{"amplitude":"exact-gains","dataset":"toy","dy":2.0,"fingerprint":"@FP","lam":null,"layers":"up-to-peak",'
        '"method":"llv","order":8,'
        '"positions":null,"prompt":"@PROMPT","q":null,"qf":null,"r":null,"seed":0,'
        '"settings":{"do_sample":false,"max_new_tokens":4,"seed":0,"temperature":1.0,"top_p":1.0},'
        '"sizes":[400,200,200],"steer_text":null,"strength":null,"variant":null}'),
    "steer-jacobian": (
        lambda s, m: s.steer(m, PROMPT, "jacobian", JacobianParams("Golden Gate", lam=0.5), settings=STEER_SETTINGS),
        "steer", True,
        '{"dataset":null,"dy":null,"fingerprint":null,"lam":0.5,"layers":null,"method":"jacobian",'
        '"operator":"affine","order":null,"positions":null,"prompt":"@PROMPT","q":null,"qf":null,"r":null,'
        '"seed":0,"settings":{"do_sample":false,"max_new_tokens":4,"seed":0,"temperature":1.0,"top_p":1.0},'
        '"sizes":[400,200,200],"steer_text":"Golden Gate","strength":null,"variant":"blend"}'),
    "steer-lqr": (
        lambda s, m: s.steer(m, PROMPT, "lqr", LQRParams(q=5.0, r=2.0, qf=1.5), dataset=DATA, settings=STEER_SETTINGS),
        "steer", True,
        '{"at":"input","dataset":"toy","dy":null,"fingerprint":"@FP","lam":null,"layers":null,"method":"lqr",'
        '"order":null,"positions":null,"prompt":"@PROMPT","q":5.0,"qf":1.5,"r":2.0,"seed":0,"setpoint":"class-mean",'
        '"settings":{"do_sample":false,"max_new_tokens":4,"seed":0,"temperature":1.0,"top_p":1.0},'
        '"sizes":[400,200,200],"steer_text":null,"strength":null,"variant":null}'),
    # the reference recipe keeps the key of before the calibrated defaults
    "steer-lqr-reference": (
        lambda s, m: s.steer(m, PROMPT, "lqr", LQRParams(q=5.0, r=2.0, qf=1.5, setpoint="scaled", at="output"),
                             dataset=DATA, settings=STEER_SETTINGS),
        "steer", True,
        '{"dataset":"toy","dy":null,"fingerprint":"@FP","lam":null,"layers":null,"method":"lqr","order":null,'
        '"positions":null,"prompt":"@PROMPT","q":5.0,"qf":1.5,"r":2.0,"seed":0,'
        '"settings":{"do_sample":false,"max_new_tokens":4,"seed":0,"temperature":1.0,"top_p":1.0},'
        '"sizes":[400,200,200],"steer_text":null,"strength":null,"variant":null}'),
    "steering-jacobian": (
        lambda s, m: s.steering_jacobian(m, "Golden Gate"), "steer-jacobian", False,
        '{"final_norm":false,"layer":1}'),
    "steering-jacobian-reference": (
        lambda s, m: s.steering_jacobian(m, "Golden Gate", layer=2, variant="reference"), "steer-jacobian", False,
        '{"final_norm":true,"layer":2}'),
    "mean-jacobians": (
        lambda s, m: s.mean_jacobians(m, DATA), "mean-jacobians", False,
        '{"dataset":"toy","fingerprint":"@FP","max_tokens":24,"n_prompts":50,"seed":0,"sizes":[400,200,200]}'),
}


def _expected(text: str) -> str:
    return text.replace("@FP", FINGERPRINT).replace("@PROMPT", PROMPT)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_cached_analysis_keys_on_the_pinned_name_and_params(recorded, case):
    call, service, spec = recorded
    fn, analysis, with_prompt, params = CASES[case]
    got = call(fn)
    assert got["analysis"] == analysis
    assert _canonical(got["params"]) == _expected(params)
    info = service.info(spec)
    ids = info.encode("Golden Gate") if case.startswith("steering-jacobian") else info.encode(PROMPT)
    expected_ids = ids if with_prompt or case.startswith("steering-jacobian") else []
    assert [int(i) for i in got["input_ids"]] == expected_ids


def test_the_fixed_concept_fingerprint_is_pinned():
    assert DATA.fingerprint() == FINGERPRINT


def test_make_key_hashing_is_pinned():
    """The hash of a synthetic payload, and the full key of one real case with a fake revision."""
    assert lldd_core.__version__ == cache_keys.__version__ == "0.1.0"  # part of every key
    key = cache_keys.make_key("spectrum", model="org/model", revision="0123456789abcdef" * 2 + "01234567",
                              dtype="float32", input_ids=[5, 3, 9], params={"b": [1, 2.5, None], "a": "x"})
    canonical = ('{"analysis":"spectrum","code_version":"0.1.0","dtype":"float32","input_ids":[5,3,9],'
                 '"model":"org/model","params":{"a":"x","b":[1,2.5,null]},'
                 '"revision":"0123456789abcdef0123456789abcdef01234567"}')
    assert key == "spectrum:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert key == "spectrum:ee94654de0174d88e4368edf02422217d43eb3d35e79f8c7f1fba2dc87eefc0a"
    assert cache_keys.make_key("layers", model="m", revision="r", dtype="float16") == "layers:0bf0115e61fb58d44dd7d2f468ad26ae49689e006acbf35698c82ec68f8cf26c"
    full = cache_keys.make_key("jacobian", model="tiny", revision="f" * 40, dtype="float64", input_ids=[1, 2, 3],
                               params=json.loads(_expected(CASES["jacobian"][3])))
    assert full == "jacobian:ae758fb1e243cf6e7f32415ddab77987ad135998daec3d62d8bb76eae0aec1d1"


def test_the_ray_sweep_keys_are_pinned(recorded, monkeypatch):
    """The distributed sweep builds its own keys (result, basis, chunks): the same names and params."""
    pytest.importorskip("ray")
    from lldd_core.analysis.settings import GainsSettings
    from lldd_core.sweep import ray as sweep_ray

    _, service, spec = recorded
    seen: list[tuple[str, str, list]] = []

    def recorder(analysis: str, **kwargs: Any) -> str:
        seen.append((analysis, _canonical(kwargs["params"]), list(kwargs["input_ids"])))
        return analysis

    monkeypatch.setattr(sweep_ray, "make_key", recorder)
    keys, chunk_key = sweep_ray._keys(service, spec, DATA, GainsSettings())
    chunk_key(0, 16)
    common = ('"complement":"krylov","dataset":"toy",@EPS"fingerprint":"@FP","mode":"prompt","n_eval":32,"order":32,'
              '@ROWS"seed":0,"sizes":[400,200,200]')
    assert seen == [
        ("gains", _expected("{" + common.replace("@EPS", '"eps":0.1,').replace("@ROWS", "") + "}"), []),
        ("gains-basis", _expected("{" + common.replace("@EPS", "").replace("@ROWS", "") + "}"), []),
        ("gains-chunk", _expected("{" + common.replace("@EPS", '"eps":0.1,').replace("@ROWS", '"rows":[0,16],') + "}"),
         []),
    ]
    assert keys == {"result": "gains", "basis": "gains-basis"}


_GEN40 = '"settings":{"do_sample":false,"max_new_tokens":40,"seed":0,"temperature":1.0,"top_p":1.0}'

#: CLI command line (before --model/--dtype) -> its analysis name and the params' canonical JSON
#: (``@FP``: the fingerprint of the built-in dataset, not pinned here; ``@SERVICE:<case>``: as that service case).
CLI_CASES: dict[str, tuple[list[str], str, str]] = {
    "jacobian": (["jacobian", "--prompt", PROMPT], "jacobian", "@SERVICE:jacobian"),
    "graph": (["graph", "--prompt", PROMPT], "graph", "@SERVICE:graph"),
    "spectrum": (["spectrum", "--prompt", PROMPT], "spectrum", "@SERVICE:spectrum"),
    "layers": (["layers", "--prompt", PROMPT], "layers", "@SERVICE:layers"),
    "gains": (["gains", "--dataset", "sentiment"], "gains",
              '{"complement":"krylov","dataset":"sentiment","eps":0.1,"fingerprint":"@FP","mode":"prompt",'
              '"n_eval":32,"order":32,"seed":0,"sizes":[400,200,200]}'),
    "control": (["control", "--dataset", "sentiment"], "control",
                '{"complement":"krylov","dataset":"sentiment","eps":0.0,"fingerprint":"@FP","mode":"population",'
                '"n_eval":16,"order":32,"seed":0,"sizes":[400,200,200],"targets":[1.0],"tol":0.01}'),
    "steer-additive": (
        ["steer", "--prompt", PROMPT, "--method", "additive", "--dataset", "sentiment"], "steer",
        '{"dataset":"sentiment","dy":null,"fingerprint":"@FP","lam":null,"layer_rule":"largest-gain","layers":null,'
        '"method":"additive","order":null,"positions":"last","prompt":"@PROMPT","q":null,"qf":null,"r":null,'
        '"seed":0,' + _GEN40 + ',"shift":0.5,"sizes":[400,200,200],"steer_text":null,"strength":null,'
        '"variant":null}'),
    "steer-llv": (
        ["steer", "--prompt", PROMPT, "--method", "llv", "--dataset", "sentiment"], "steer",
        '{"amplitude":"exact-gains","dataset":"sentiment","dy":null,"fingerprint":"@FP","lam":null,'
        '"layers":"up-to-peak","method":"llv","order":32,"positions":null,"prompt":"@PROMPT","q":null,"qf":null,'
        '"r":null,"seed":0,' + _GEN40 + ','
        '"shift":0.5,"sizes":[400,200,200],"steer_text":null,"strength":null,"variant":null}'),
    "steer-jacobian": (
        ["steer", "--prompt", PROMPT, "--method", "jacobian", "--steer-text", "Golden Gate"], "steer",
        '{"dataset":null,"dy":null,"fingerprint":null,"lam":null,"layers":null,"method":"jacobian",'
        '"operator":"affine","order":null,"positions":null,"prompt":"@PROMPT","q":null,"qf":null,"r":null,'
        '"seed":0,' + _GEN40 + ',"sizes":[400,200,200],"steer_text":"Golden Gate","strength":null,'
        '"variant":"blend"}'),
    "steer-lqr": (
        ["steer", "--prompt", PROMPT, "--method", "lqr", "--dataset", "sentiment"], "steer",
        '{"at":"input","dataset":"sentiment","dy":null,"fingerprint":"@FP","lam":null,"layers":null,"method":"lqr",'
        '"order":null,"positions":null,"prompt":"@PROMPT","q":10.0,"qf":1.0,"r":1.0,"seed":0,"setpoint":"class-mean",'
        + _GEN40 + ',"sizes":[400,200,200],"steer_text":null,"strength":null,"variant":null}'),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_every_cli_command_with_its_defaults_keys_as_pinned(recorded, fresh_service, case):
    """The CLI's defaults are part of the keys too: a default command line must stay a hit."""
    from lldd_core.cli.main import main

    call, _, spec = recorded
    argv, analysis, params = CLI_CASES[case]
    got = call(lambda s, m: main([*argv, "--model", spec.model, "--dtype", "float64", "--quiet"]))
    assert got["analysis"] == analysis
    if params.startswith("@SERVICE:"):
        params = CASES[params.removeprefix("@SERVICE:")][3]
    text = _canonical(got["params"])
    fingerprint = got["params"].get("fingerprint")
    if fingerprint is not None:
        assert len(fingerprint) == 64
        text = text.replace(fingerprint, "@FP")
    assert text == params.replace("@PROMPT", PROMPT)


#: A concept big enough to split for a Steering lab sweep (4 texts a class).
LAB_DATA = ConceptData(name="toy8", source="builtin:toy8",
                       texts=("good day", "fine film", "nice song", "warm sun", "bad day", "dull film", "sad song",
                              "cold rain"),
                       labels=np.array([1, 1, 1, 1, 0, 0, 0, 0]), classes=("negative", "positive"))
LAB_FINGERPRINT = "674d9856966f8051e70fd0e7c606d778c7965550635ab37d5e99328b9556edd8"
_LAB_COMMON = ('"classifier":null,"classifier_label":null,"dataset":"toy8","fingerprint":"@FP8","fluency_model":null,'
               '@CELL"max_new_tokens":4,"method":@METHOD,"n_prompts":8,"neutral":["The bridge out of Marin is the",'
               '"The capital of France is","The Eiffel Tower is in","The cow says","The capital of Japan is",'
               '"The Colosseum is in"],"prompts":["The bridge is"],"seed":0,"sizes":[2,1,1],"steer_text":"good day",'
               '"strength":@STRENGTH')


def _lab_key(layer: str, method: str, params: str, strength: str) -> str:
    body = _LAB_COMMON.replace("@FP8", LAB_FINGERPRINT).replace("@CELL", f'"layer":{layer},')
    body = body.replace('"method":@METHOD,', f'"method":"{method}","method_params":{params},')
    return "{" + body.replace("@STRENGTH", strength) + "}"


def test_the_steering_lab_cell_keys_are_pinned(tiny_gpt2):
    """Every lab cell is cached on its own key (``steer-sweep-cell``): a widened or resumed sweep must keep
    hitting the cells computed before, so their params are pinned like the analyses'."""
    from lldd_core.steering.lab.settings import SweepSettings
    from lldd_core.steering.lab.sweep import ANALYSIS, sweep_request

    assert ANALYSIS == "steer-sweep-cell" and LAB_DATA.fingerprint() == LAB_FINGERPRINT
    service = Service()
    spec = ModelSpec(str(tiny_gpt2), dtype="float64")
    request = sweep_request(service.info(spec), spec, LAB_DATA, SweepSettings(
        methods=("additive", "lqr"), layers=(1,), prompts=("The bridge is",), max_new_tokens=4, sizes=(2, 1, 1)))
    cells = {(c.method, c.strength): c for c in request.cells}
    assert _canonical(request.key_params(request.baseline)) == _lab_key("null", "unsteered", "{}", "0.0")
    assert _canonical(request.key_params(cells[("additive", 4.0)])) == _lab_key(
        "1", "additive", '{"layers":[1],"positions":"last","strength":4.0}', "4.0")
    assert _canonical(request.key_params(cells[("lqr", 10.0)])) == _lab_key(
        "null", "lqr", '{"at":"input","lam":null,"q":10.0,"qf":1.0,"r":1.0,"setpoint":"class-mean"}', "10.0")
    assert sorted(cells) == [("additive", s) for s in (0.0, 4.0, 8.0, 16.0, 32.0)] + [
        ("lqr", s) for s in (0.0, 1.0, 10.0, 100.0, 1000.0)]
    service.cache.close()
