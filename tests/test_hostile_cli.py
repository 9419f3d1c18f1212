"""Hostile command lines: every one gets exit status 2 and one ``error:`` line, never a traceback.

Families: negative, garbage, huge and non-finite numbers for every numeric option of every command;
values outside a range that depends on the model (layers, hidden size, context); prompts past the
context; unwritable ``--json`` targets; garbage ``LLDD_*`` settings; Ctrl-C (exit 130, one line).
Every test first caches a Jacobian result (``survivor``) and checks afterwards that it is still a
hit with identical numbers. Tiny models: GPT-2 with 2 layers, width 32, 64 positions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from lldd_core import ranges as R
from lldd_core import service as service_module
from lldd_core.cli.main import build_parser, main
from tests.hostile import refuse
from tests.tiny import PROMPT

ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--dataset", "sentiment", "--sizes", "6,4,3"]


@pytest.fixture(autouse=True)
def _survives(survivor):
    """Every test of this file leaves the survivor's cached result a hit with identical numbers."""
    return survivor


@pytest.fixture()
def model(tiny_dirs) -> list[str]:
    return ["--model", str(tiny_dirs["gpt2"]), "--device", "cpu", "--quiet"]


# --- options refused by their range as they are parsed -------------------------------------------------

PARSED = [
    ("demo", "build", "--seed", "-1"),
    ("demo", "build", "--seed", "abc"),
    ("demo", "build", "--seed", "99999999999"),
    ("demo", "build", "--seed", "1.5"),
    ("demo", "build", "--steps", "0"),
    ("gains", *SMALL[:2], "--sizes", "a,b,c"),
    ("gains", *SMALL[:2], "--sizes", "1,2"),
    ("gains", *SMALL[:2], "--sizes", "-1,2,3"),
    ("gains", *SMALL[:2], "--sizes", "0,0,0"),
    ("gains", *SMALL[:2], "--sizes", "6,4,3,2"),
    ("gains", *SMALL, "--order", "0"),
    ("gains", *SMALL, "--order", "-4"),
    ("gains", *SMALL, "--eps", "nan"),
    ("gains", *SMALL, "--eps", "inf"),
    ("gains", *SMALL, "--eps", "-0.1"),
    ("gains", *SMALL, "--eps", "0"),
    ("gains", *SMALL, "--n-eval", "0"),
    ("gains", *SMALL, "--n-eval", "two"),
    ("gains", *SMALL, "--seed", "-5"),
    ("sweep", "--models", "demo:gpt2-small", "--order", "-3"),
    ("sweep", "--models", "demo:gpt2-small", "--sizes", "1,2"),
    ("sweep", "--models", "demo:gpt2-small", "--engine", "ray", "--chunk-size", "0"),
    ("sweep", "--models", "demo:gpt2-small", "--engine", "ray", "--gpus-per-task", "-1"),
    ("sweep", "--models", "demo:gpt2-small", "--engine", "ray", "--gpus-per-task", "nan"),
    ("control", *SMALL, "--target", "1,nan"),
    ("control", *SMALL, "--target", "inf"),
    ("control", *SMALL, "--target", "0"),
    ("control", *SMALL, "--target", ""),
    ("control", *SMALL, "--target", "1,,2"),
    ("control", *SMALL, "--tol", "0"),
    ("control", *SMALL, "--tol", "1.5"),
    ("control", *SMALL, "--n-eval", "-2"),
    ("control", *SMALL[:2], "--sizes", "0,0,0"),
    ("control", *SMALL, "--seed", "1.5"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--strength", "nan"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--strength", "-inf"),
    ("steer", "--prompt", "The movie was", "--method", "llv", *SMALL, "--dy", "nan"),
    ("steer", "--prompt", "The movie was", "--method", "llv", *SMALL, "--dy", "1e9"),
    ("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "Paris", "--lam", "nan"),
    ("steer", "--prompt", "The movie was", "--method", "lqr", *SMALL, "--lam", "100"),
    ("steer", "--prompt", "The movie was", "--method", "lqr", *SMALL, "--q", "-1"),
    ("steer", "--prompt", "The movie was", "--method", "lqr", *SMALL, "--r", "0"),
    ("steer", "--prompt", "The movie was", "--method", "lqr", *SMALL, "--r", "-10"),
    ("steer", "--prompt", "The movie was", "--method", "lqr", *SMALL, "--qf", "inf"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--max-new-tokens", "0"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--max-new-tokens", "-5"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--max-new-tokens", "100000"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--sample", "--temperature", "0"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--temperature", "-1"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--sample", "--top-p", "0"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--top-p", "1.5"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--layer", "a,b"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--layer", "-1"),
    ("steer", "--prompt", "The movie was", "--method", "additive", "--dataset", "sentiment", "--sizes", "a,b,c"),
    ("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--seed", "-1"),
    ("memory", "--tokens", "0"),
    ("memory", "--tokens", "-1"),
    ("spectrum", "--prompt", PROMPT, "--decode", "0"),
    ("spectrum", "--prompt", PROMPT, "--decode", "1000"),
    ("spectrum", "--prompt", PROMPT, "--top-k", "0"),
    ("spectrum", "--prompt", PROMPT, "--top-k", "-3"),
    ("layers", "--prompt", PROMPT, "--top-k", "0"),
    ("layers", "--prompt", PROMPT, "--decode", "nan"),
    ("jacobian", "--prompt", PROMPT, "--top-k", "0"),
    ("jacobian", "--prompt", PROMPT, "--layer", "0"),
    ("jacobian", "--prompt", PROMPT, "--layer", "x"),
]


@pytest.mark.parametrize("argv", PARSED, ids=[" ".join(a[:1] + a[-2:]) for a in PARSED])
def test_out_of_range_options_are_refused_as_parsed(capsys, model, argv):
    extra = model if argv[0] not in ("demo",) else []
    line = refuse(capsys, *argv, *extra)
    flag = next(a for a in reversed(argv) if a.startswith("--")).split("=")[0]
    assert line.startswith("error: argument " + flag + ": must be"), line


# --- bounds that depend on the model: checked once its config is read --------------------------------

MODEL_BOUNDS = [
    (("jacobian", "--prompt", PROMPT, "--layer", "3"), "from 1 to the number of layers 2; got 3"),
    (("jacobian", "--prompt", PROMPT, "--top-k", "33"), "from 1 to the hidden size 32; got 33"),
    (("spectrum", "--prompt", PROMPT, "--top-k", "33"), "from 1 to the hidden size 32; got 33"),
    (("spectrum", "--prompt", PROMPT, "--layer", "5"), "from 1 to the number of layers 2; got 5"),
    (("layers", "--prompt", PROMPT, "--top-k", "1000"), "hidden size 32; got 1000"),
    (("layers", "--prompt", PROMPT, "--sites", "cumulative,nowhere"), "Unknown site(s) 'nowhere'"),
    (("gains", *SMALL, "--n-eval", "2", "--order", "33"), "hidden size 32; got 33"),
    (("control", *SMALL, "--n-eval", "2", "--order", "99"), "hidden size 32; got 99"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "Paris", "--lam", "1.5"),
     "λ of the blend variant (--lam) must be a number in [0, 1]; got 1.5"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "Paris", "--variant", "additive",
      "--lam", "5"), "λ of the additive variant (--lam) must be a number in [-4, 4]; got 5"),
    (("steer", "--prompt", "The movie was", "--method", "additive", *SMALL, "--layer", "2"),
     "from 0 to the number of layers - 1 (1); got 2"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "Paris", "--layer", "0"),
     "Jacobian steering layer (--layer) must be an integer from 1 to the number of layers 2; got 0"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "Paris", "--layer", "1,2"),
     "steers at one layer"),
    (("steer", "--prompt", "The movie was", "--method", "llv", *SMALL, "--order", "33"), "hidden size 32; got 33"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", ""), "needs a steering phrase"),
    (("steer", "--prompt", "The movie was", "--method", "jacobian", "--steer-text", "   "), "needs a steering phrase"),
    (("steer", "--prompt", "   ", "--method", "jacobian", "--steer-text", "Paris"), "The prompt is empty"),
    (("memory", "--tokens", "65"), "from 1 to the model's context 64; got 65"),
]


@pytest.mark.parametrize("argv, message", MODEL_BOUNDS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in MODEL_BOUNDS])
def test_bounds_of_the_model_are_refused_before_any_work(capsys, model, argv, message):
    line = refuse(capsys, *argv, *model)
    assert message in line, line


# --- the context: prompts and generations past the model's positions ------------------------------------


def test_prompt_plus_new_tokens_past_the_context_states_the_numbers(capsys, model, tiny_dirs):
    from transformers import AutoTokenizer

    n = len(AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])(PROMPT)["input_ids"])
    line = refuse(capsys, "steer", "--prompt", PROMPT, "--method", "jacobian", "--steer-text", "Paris",
                  "--max-new-tokens", "60", *model)
    assert f"The prompt has {n} tokens and 60 new tokens were asked for" in line
    assert f"at most 64 positions: ask for at most {64 - n} new tokens" in line


def test_a_prompt_that_fills_the_context_leaves_no_room(capsys, model, tiny_dirs):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_dirs["gpt2"])
    prompt = next(p for n in range(100) for p in ("The cat" + " cat" * n, "The cat" + " cat" * n + ".")
                  if len(tok(p)["input_ids"]) == 64)
    line = refuse(capsys, "steer", "--prompt", prompt, "--method", "jacobian", "--steer-text", "Paris",
                  "--max-new-tokens", "1", *model)
    assert "leaves no room for new tokens in the 64 positions" in line


@pytest.mark.parametrize("command", ["jacobian", "spectrum", "layers"])
def test_an_oversized_prompt_is_refused_by_the_analyses(capsys, model, command):
    line = refuse(capsys, command, "--prompt", "The cat says meow " * 40, *model)
    assert "handles at most 64: shorten it" in line


# --- --json targets that cannot be written -----------------------------------------------------------


def _json_targets(tmp_path: Path) -> dict[str, str]:
    afile = tmp_path / "a-file"
    afile.write_text("x")
    (tmp_path / "a-folder").mkdir()
    return {"a folder": str(tmp_path / "a-folder"), "under a file": str(afile / "out.json"),
            "missing folder": str(tmp_path / "missing" / "out.json"), "proc": "/proc/lldd-no-such-file"}


@pytest.mark.parametrize("which", ["a folder", "under a file", "missing folder", "proc"])
def test_unwritable_json_target_keeps_the_result(capsys, model, tmp_path, which):
    target = _json_targets(tmp_path)[which]
    argv = ["spectrum", "--prompt", PROMPT, "--top-k", "2", "--dtype", "float64", *model]
    line = refuse(capsys, *argv, "--json", target)
    assert line.startswith(f"error: Could not write the JSON to {target!r}: ") and "stored in the cache" in line
    service_module._SERVICE = None
    assert main([*argv, "--json", "-"]) == 0  # computed once: now a cache hit
    assert json.loads(capsys.readouterr().out)["cache_hit"] is True


def test_unwritable_json_of_a_sweep_keeps_the_cells(capsys, tiny_dirs, tmp_path):
    line = refuse(capsys, "sweep", "--models", str(tiny_dirs["gpt2"]), "--status-only", "--sizes", "6,4,3",
                  "--order", "4", "--n-eval", "2", "--device", "cpu", "--quiet", "--json", str(tmp_path))
    assert "Could not write the JSON" in line and "finished cell is stored" in line


# --- LLDD_* settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "lots", "-1", "inf", "0"])
def test_garbage_jacobian_limit_is_one_line(capsys, model, monkeypatch, value):
    monkeypatch.setenv("LLDD_MAX_JACOBIAN_GB", value)
    line = refuse(capsys, "spectrum", "--prompt", PROMPT, "--method", "full", "--top-k", "2", *model)
    assert line.startswith(f"error: LLDD_MAX_JACOBIAN_GB='{value}' is not valid: set it to a number in (0, 1000000]")


def test_a_demo_folder_that_is_a_file_is_one_line(capsys, monkeypatch, tmp_path):
    afile = tmp_path / "a-file"
    afile.write_text("x")
    monkeypatch.setenv("LLDD_DEMO_DIR", str(afile))
    line = refuse(capsys, "demo", "build", "--steps", "1", "--quiet")
    assert "LLDD_DEMO_DIR=" in line and "is not a folder" in line


def test_an_offload_folder_that_is_a_file_is_one_line(monkeypatch, tmp_path):
    from lldd_core.errors import InputError
    from lldd_core.models.loading import offload_dir

    afile = tmp_path / "a-file"
    afile.write_text("x")
    monkeypatch.setenv("LLDD_OFFLOAD_DIR", str(afile))
    with pytest.raises(InputError, match="LLDD_OFFLOAD_DIR=.* is not a folder"):
        offload_dir()


def test_a_blank_default_model_means_the_built_in_one(monkeypatch):
    from lldd_core.models.loading import BUILTIN_DEFAULT_MODEL, default_model

    monkeypatch.setenv("LLDD_DEFAULT_MODEL", "  \t ")
    assert default_model() == BUILTIN_DEFAULT_MODEL


# --- Ctrl-C ------------------------------------------------------------------------------------------


def test_ctrl_c_during_an_analysis_is_one_line(capsys, model, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(service_module.Service, "spectrum", interrupted)
    service_module._SERVICE = None
    assert main(["spectrum", "--prompt", PROMPT, *model]) == 130
    out, err = capsys.readouterr()
    assert err == "interrupted\n" and out == ""


INTERRUPT_ON_IMPORT = textwrap.dedent("""
    import runpy, sys

    class Interrupt:  # Ctrl-C exactly while {module} is importing
        def find_spec(self, name, path=None, target=None):
            if name == "{module}":
                raise KeyboardInterrupt
            return None

    sys.meta_path.insert(0, Interrupt())
    sys.argv = ["lldd_core", "jacobian", "--prompt", "hi"]
    runpy.run_module("lldd_core", run_name="__main__", alter_sys=True)
""")


@pytest.mark.parametrize("module", ["torch", "lldd_core.ranges"])
def test_ctrl_c_while_importing_is_one_line_and_status_130(module):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", INTERRUPT_ON_IMPORT.format(module=module)], check=False,
                          capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr == "interrupted\n" and "Traceback" not in done.stderr


# --- --help states every range -----------------------------------------------------------------------


def _parsers(parser) -> list:
    """The parser and every (nested) subcommand's parser."""
    import argparse

    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_help_of_every_subcommand_states_the_range_of_each_numeric_option():
    import argparse

    checked = 0
    for parser in _parsers(build_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            assert action.type not in (int, float), (parser.prog, action.option_strings)  # unranged numbers
            rng = getattr(action.type, "range", None)
            if rng is None or action.help == argparse.SUPPRESS:
                continue
            words = "three comma-separated integers" if action.type is R.sizes_argtype else rng.describe()
            assert words in text, (parser.prog, action.option_strings, words)
            checked += 1
    assert checked >= 40  # every numeric option of jacobian, spectrum, layers, gains, sweep, control, steer, ...


# --- the same ranges hold for a Python caller of the core --------------------------------------------


@pytest.fixture(scope="module")
def handle(tiny_dirs):
    from tests.helpers import load

    return load(tiny_dirs["gpt2"])


def test_core_generate_refuses_past_the_context(handle):
    from lldd_core.errors import InputError
    from lldd_core.steering.generate import GenerationSettings, generate

    ids = handle.info.encode(PROMPT)
    with pytest.raises(InputError, match=f"The prompt has {len(ids)} tokens and 60 new tokens were asked for"):
        generate(handle, [ids], (), GenerationSettings(max_new_tokens=60))
    assert len(generate(handle, [ids], (), GenerationSettings(max_new_tokens=64 - len(ids)))[0].new_ids) >= 1


@pytest.mark.parametrize("method, kwargs, message", [
    ("lqr", {"r": 0.0}, "control weight r"),
    ("lqr", {"q": float("nan")}, "state weight q"),
    ("lqr", {"qf": -1.0}, "terminal weight"),
    ("lqr", {"lam": 11.0}, "setpoint scale"),
    ("additive", {"strength": float("inf")}, "strength α"),
    ("additive", {"layers": [2]}, "additive steering layer"),
    ("llv", {"dy": float("nan")}, "target shift Δy"),
    ("llv", {"order": 0}, "reduced order"),
    ("jacobian", {"steer_text": "Paris", "lam": -0.5}, "blend variant"),
    ("jacobian", {"steer_text": "Paris", "variant": "additive", "lam": 4.5}, "additive variant"),
    ("jacobian", {"steer_text": "Paris", "layers": [0]}, "Jacobian steering layer"),
    ("magic", {}, "Unknown method"),
])
def test_plan_steering_checks_its_settings(handle, method, kwargs, message):
    from lldd_core.errors import InputError
    from lldd_core.steering.methods.registry import plan_steering

    with pytest.raises(InputError, match=message):
        plan_steering(handle, method, kwargs)


@pytest.mark.parametrize("kwargs, message", [({"k": 0}, "singular triplets"), ({"k": 33}, "hidden size 32"),
                                             ({"n_decode": 51}, "decoded tokens"), ({"layer": 0}, "output layer")])
def test_analyze_spectrum_checks_its_settings(handle, kwargs, message):
    from lldd_core.analysis.spectrum import analyze_spectrum
    from lldd_core.errors import InputError

    with pytest.raises(InputError, match=message):
        analyze_spectrum(handle, handle.info.encode(PROMPT), **kwargs)


@pytest.mark.parametrize("kwargs, message", [({"sizes": (6, 0, 3)}, "operating split"), ({"seed": -1}, "seed"),
                                             ({"n_eval": 0}, "evaluation prompts"), ({"eps": float("nan")}, "ε")])
def test_analyze_gains_checks_its_settings(handle, kwargs, message):
    from lldd_core.analysis.gains import analyze_gains
    from lldd_core.concepts.catalog import load
    from lldd_core.errors import InputError

    with pytest.raises(InputError, match=message):
        analyze_gains(handle, load("sentiment"), **{"order": 4, "sizes": (6, 4, 3), **kwargs})
