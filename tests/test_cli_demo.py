"""``python -m lldd_core demo build|info`` and demo models in analysis commands.

Builds use ``--steps 5`` (seconds, barely trained) into a temporary ``$LLDD_DEMO_DIR``; a model
built on first use by ``jacobian`` is made quick by shrinking its configured training budget.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from lldd_core import service as service_module
from lldd_core.cli.main import main
from lldd_core.cli.resources import select_demos
from lldd_core.demo import DEMO_CONFIGS, build_demo, is_built
from lldd_core.demo import build as build_module

BUILT_KEYS = {"name", "model", "path", "arch", "size", "parameters", "heldout_loss", "unigram_loss", "fact_accuracy",
              "build_seconds", "steps", "seed", "built"}


@pytest.fixture(autouse=True)
def isolated(cache_dir, tmp_path, monkeypatch) -> Path:
    """A fresh service, an empty result cache and an empty demo folder for every test."""
    monkeypatch.setattr(service_module, "_SERVICE", None)
    demo = tmp_path / "demo"
    monkeypatch.setenv("LLDD_DEMO_DIR", str(demo))
    monkeypatch.delenv("LLDD_DEFAULT_MODEL", raising=False)
    return demo


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(code: int, out: str, err: str) -> str:
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_build_info_skip_and_jacobian(capsys, isolated):
    code, out, _ = _run(capsys, "demo", "build", "--size", "small", "--arch", "llama", "--steps", "5", "--quiet")
    assert code == 0 and is_built("llama-small")
    assert out.startswith("llama-small  built") and "held-out loss" in out and "unigram" in out and "facts" in out
    assert len(out.strip().splitlines()) == 1

    code, out, _ = _run(capsys, "demo", "info", "--json", "-")
    assert code == 0
    report = json.loads(out)
    assert report["default"] == "gpt2-small" and report["directory"] == str(isolated)
    models = {m["name"]: m for m in report["models"]}
    assert list(models) == list(DEMO_CONFIGS)
    llama = models["llama-small"]
    assert BUILT_KEYS <= llama.keys() and llama["built"] is True
    assert llama["path"] == str(isolated / "llama-small") and llama["arch"] == "llama" and llama["steps"] == 5
    assert llama["parameters"] > 0 and llama["heldout_loss"] > 0 and llama["unigram_loss"] > 0
    assert all(m["built"] is False for name, m in models.items() if name != "llama-small")

    code, out, _ = _run(capsys, "demo", "info")
    assert code == 0 and "llama-small" in out and "gpt2-small *" in out and "not built" in out

    stamp = (isolated / "llama-small" / "model.safetensors").stat().st_mtime_ns
    code, out, _ = _run(capsys, "demo", "build", "--arch", "llama", "--steps", "5", "--quiet")
    assert code == 0 and out.startswith("llama-small  skipped")
    assert (isolated / "llama-small" / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt

    code, out, _ = _run(capsys, "jacobian", "--model", "demo:llama-small", "--prompt", "The Golden Gate Bridge is in",
                        "--json", "-", "--quiet")
    assert code == 0
    data = json.loads(out)
    assert data["model"] == "demo:llama-small" and data["dtype"] == "float32"
    assert data["reconstruction_error"] < 1e-5 < data["plain_reconstruction_error"]


def test_force_rebuilds_with_progress_on_stderr(capsys, isolated):
    build_demo("llama-small", steps=5)
    code, out, err = _run(capsys, "demo", "build", "--arch", "llama", "--steps", "5", "--seed", "1", "--force")
    assert code == 0 and out.startswith("llama-small  built")
    assert "Training llama-small" in err  # the tqdm bar
    assert json.loads((isolated / "llama-small" / "lldd_demo.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    "size, arch, names",
    [("small", None, ["gpt2-small"]), ("medium", None, ["gpt2-medium"]),
     ("all", "gpt2", ["gpt2-small", "gpt2-medium", "gpt2-large"]), ("all", None, list(DEMO_CONFIGS)),
     ("small", "llama", ["llama-small"]), ("all", "llama", ["llama-small"])],
)
def test_size_and_arch_select_models(size, arch, names):
    assert select_demos(size, arch) == names


@pytest.mark.parametrize("argv, message", [
    (["--arch", "llama", "--size", "large"], "There is no llama demo model of size large: llama comes in small"),
    (["--steps", "0"], "argument --steps: must be an integer from 1"),
    (["--seed", "-1"], "argument --seed: must be an integer from 0"),
])
def test_bad_build_options_are_one_line(capsys, argv, message):
    line = _one_error_line(*_run(capsys, "demo", "build", *argv))
    assert message in line


def test_jacobian_builds_a_missing_demo_model_first(capsys, isolated, monkeypatch):
    # Whoever builds on first use (service or loader) reads the budget from DEMO_CONFIGS: 5 steps.
    monkeypatch.setitem(DEMO_CONFIGS, "gpt2-medium", dataclasses.replace(DEMO_CONFIGS["gpt2-medium"], steps=5))
    trained: list[str] = []
    train = build_module.train
    monkeypatch.setattr(build_module, "train", lambda cfg, **kw: trained.append(cfg.name) or train(cfg, **kw))
    code, out, err = _run(capsys, "jacobian", "--model", "demo:gpt2-medium", "--prompt", "The cat says", "--json", "-")
    assert code == 0 and trained == ["gpt2-medium"] and is_built("gpt2-medium")
    assert json.loads((isolated / "gpt2-medium" / "lldd_demo.json").read_text())["steps"] == 5
    assert "demo:gpt2-medium is not built yet: building it first" in err
    assert "Training gpt2-medium" in err  # the build reports to the command's progress bar
    assert "Writing model shards" not in err  # transformers' own bars stay out of ours
    assert json.loads(out)["reconstruction_error"] < 1e-5


def test_unknown_demo_model_lists_the_demo_models(capsys):
    line = _one_error_line(*_run(capsys, "jacobian", "--model", "demo:nope", "--prompt", "hi", "--quiet"))
    assert "There is no demo model 'nope'" in line and ", ".join(DEMO_CONFIGS) in line


def test_unwritable_demo_folder_is_one_line(capsys, tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("LLDD_DEMO_DIR", str(blocker / "demo"))
    line = _one_error_line(*_run(capsys, "demo", "build", "--arch", "llama", "--steps", "1", "--quiet"))
    assert "Could not write the demo model llama-small" in line and "LLDD_DEMO_DIR" in line
