"""``python -m lldd_core``: JSON keys, cache commands, and one clear line for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import OPTConfig

from lldd_core import service as service_module
from lldd_core.cli.main import main
from tests.tiny import PROMPT

ROOT = Path(__file__).resolve().parent.parent
JSON_KEYS = {"model", "revision", "dtype", "tokens", "input_ids", "reconstruction_error", "plain_reconstruction_error",
             "bias_norm", "output_norm", "singular_values", "elapsed_s", "cache_hit"}


@pytest.fixture(autouse=True)
def fresh_service(cache_dir, monkeypatch):
    monkeypatch.setattr(service_module, "_SERVICE", None)


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_jacobian_json(capsys, tiny_dirs):
    args = ["jacobian", "--model", str(tiny_dirs["gpt2"]), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--top-k", "3", "--json", "-", "--quiet"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    data = json.loads(out)
    assert JSON_KEYS <= data.keys()
    assert data["dtype"] == "float64" and data["cache_hit"] is False
    assert len(data["tokens"]) == len(data["input_ids"]) == len(data["singular_values"])
    assert all(len(sv) == 3 and sv == sorted(sv, reverse=True) for sv in data["singular_values"])
    assert data["reconstruction_error"] < 1e-10 < 1e-3 < data["plain_reconstruction_error"]
    assert data["bias_norm"] > 0
    code, out, _ = _run(capsys, *args)
    assert json.loads(out)["cache_hit"] is True


def test_layer_and_no_final_norm(capsys, tiny_dirs, tmp_path):
    target = tmp_path / "out.json"
    code, out, _ = _run(capsys, "jacobian", "--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--layer", "1",
                        "--no-final-norm", "--json", str(target), "--quiet")
    assert code == 0 and "reconstruction error" in out  # summary still printed with a file target
    data = json.loads(target.read_text())
    assert data["layer"] == 1 and data["final_norm"] is False and data["reconstruction_error"] < 1e-5


def test_readable_summary(capsys, tiny_dirs):
    code, out, _ = _run(capsys, "jacobian", "--model", str(tiny_dirs["qwen3"]), "--prompt", "The Golden Gate", "--quiet")
    assert code == 0
    assert "reconstruction error" in out and "' Golden'" in out and "top-5 singular values" in out


def test_cache_info_and_clear(capsys, tiny_dirs, cache_dir):
    _run(capsys, "jacobian", "--model", str(tiny_dirs["gpt2"]), "--prompt", "The", "--quiet")
    code, out, _ = _run(capsys, "cache", "info", "--json", "-")
    info = json.loads(out)
    assert code == 0 and info["by_kind"]["jacobian"] == 1 and info["directory"] == str(cache_dir)
    code, out, _ = _run(capsys, "cache", "clear")
    assert code == 0 and "cleared" in out
    assert json.loads(_run(capsys, "cache", "info", "--json", "-")[1])["entries"] == 0


def _unsupported_dir(tmp_path: Path) -> str:
    OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
              word_embed_proj_dim=16).save_pretrained(tmp_path / "opt")
    return str(tmp_path / "opt")


@pytest.mark.parametrize(
    "case, message",
    [("empty", "prompt is empty"), ("missing", "No model directory"), ("unsupported", "not supported"),
     ("too_long", "at most 64"), ("layer", "from 1 to the number of layers 2")],
)
def test_bad_input_is_one_line(capsys, tiny_dirs, tmp_path, case, message):
    model, prompt, extra = str(tiny_dirs["gpt2"]), PROMPT, []
    if case == "empty":
        prompt = "  "
    elif case == "missing":
        model = str(tmp_path / "nothing-here")
    elif case == "unsupported":
        model = _unsupported_dir(tmp_path)
    elif case == "too_long":
        prompt = "word " * 300
    elif case == "layer":
        extra = ["--layer", "7"]
    code, out, err = _run(capsys, "jacobian", "--model", model, "--prompt", prompt, "--quiet", *extra)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]


def test_entry_point_has_no_traceback(tmp_path):
    """The real ``python -m lldd_core`` process, as a user runs it."""
    env = {**os.environ, "LLDD_CACHE_DIR": str(tmp_path / "c"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "lldd_core", "jacobian", "--model", str(tmp_path / "nope"),
                           "--prompt", "hi"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: No model directory")


def test_spectrum_json_per_token(capsys, tiny_dirs):
    args = ["spectrum", "--model", str(tiny_dirs["llama"]), "--prompt", PROMPT, "--dtype", "float64", "--device", "cpu",
            "--top-k", "3", "--decode", "4", "--json", "-", "--quiet"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    data = json.loads(out)
    assert {"model", "tokens", "per_token", "method", "next_token", "max_residual", "cache_hit"} <= data.keys()
    assert len(data["per_token"]) == len(data["tokens"])
    entry = data["per_token"][-1]
    assert len(entry["singular_values"]) == 3 and entry["singular_values"] == sorted(entry["singular_values"], reverse=True)
    assert len(entry["u_tokens"]) == 3 and len(entry["u_tokens"][0]) == 4 and len(entry["v_tokens"][0]) == 4
    assert entry["stable_rank"] >= 1.0
    code, out, _ = _run(capsys, *args[:-3], "--method", "matrix_free", "--quiet")
    assert code == 0 and "matrix_free" in out and "stable rank" in out and "U:" in out
    code, out, _ = _run(capsys, *args, "--positions", "0,-1")
    some = json.loads(out)["per_token"]
    assert code == 0 and [e["position"] for e in some] == [0, len(data["tokens"]) - 1]
    assert some[-1]["singular_values"] == entry["singular_values"]
    code, out, _ = _run(capsys, *args[:-3], "--method", "streamed", "--positions", "0,-1", "--quiet")
    assert code == 0 and "streamed (" in out and "passes over the rows" in out and "[0] " in out


def test_layers_json_and_text(capsys, tiny_dirs):
    args = ["layers", "--model", str(tiny_dirs["gpt2"]), "--prompt", PROMPT, "--device", "cpu", "--top-k", "2",
            "--json", "-", "--quiet"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    data = json.loads(out)
    assert data["n_layers"] == 2 and len(data["layers"]) == 2 and data["lens"] is True
    cell = data["layers"][1]["cumulative"]
    assert {"stable_rank", "singular_values", "top_u_tokens", "top_v_tokens", "projection_on_final"} <= cell.keys()
    assert len(cell["singular_values"]) == len(data["tokens"]) and len(cell["singular_values"][0]) == 2
    code, out, _ = _run(capsys, *args[:-3], "--no-lens", "--sites", "block,mlp", "--quiet")
    assert code == 0 and "raw stream" in out and "block:" in out and "cumulative:" not in out
    code, _, err = _run(capsys, *args[:-3], "--sites", "everywhere", "--quiet")
    assert code == 2 and err.startswith("error:") and "Traceback" not in err


def test_gains_json_and_datasets(capsys, tiny_dirs, tmp_path):
    args = ["gains", "--model", str(tiny_dirs["gpt2"]), "--dataset", "sentiment", "--order", "4", "--n-eval", "2",
            "--sizes", "6,4,3", "--device", "cpu", "--json", "-", "--quiet"]
    code, out, _ = _run(capsys, *args)
    assert code == 0
    data = json.loads(out)
    assert {"layers", "prompts", "mean_spearman", "mean_pearson", "cache_hit"} <= data.keys()
    assert len(data["prompts"]) == 2 and len(data["prompts"][0]["predicted"]) == len(data["layers"])
    assert {"predicted", "measured", "exact", "spearman", "pearson"} <= data["prompts"][0].keys()
    code, out, _ = _run(capsys, *args[:-3], "--quiet")
    assert code == 0 and "cache hit" in out and "mean Spearman" in out
    # a user file with one class: one clear line, exit 2
    bad = tmp_path / "one.csv"
    bad.write_text("text,label\na,1\nb,1\nc,1\n")
    code, _, err = _run(capsys, "gains", "--model", str(tiny_dirs["gpt2"]), "--dataset", str(bad), "--quiet")
    assert code == 2 and err.startswith("error:") and "Traceback" not in err
    code, out, _ = _run(capsys, "datasets", "--json", "-")
    rows = json.loads(out)["datasets"]
    assert len(rows) == 14 and {r["name"] for r in rows} >= {"sentiment", "sst2", "mnli"}
    assert all(r["available_offline"] for r in rows if r["name"] in ("sentiment", "politeness", "topic", "truth"))


def test_control_json_has_every_schedule(capsys, tiny_dirs):
    args = ("control", "--model", str(tiny_dirs["gpt2"]), "--dataset", "sentiment", "--target", "0.5,1", "--order", "4",
            "--n-eval", "2", "--sizes", "6,4,3", "--json", "-", "--quiet")
    code, out, _ = _run(capsys, *args)
    assert code == 0
    payload = json.loads(out)
    assert set(payload["schedules"]) == {"llv", "uniform", "last", "middle", "early", "random"}
    for rows in payload["schedules"].values():
        assert [row["target"] for row in rows] == [0.5, 1.0]
        assert all({"u", "energy", "achieved", "reached"} <= set(row) for row in rows)
    code, _, err = _run(capsys, "control", "--model", str(tiny_dirs["gpt2"]), "--dataset", "sentiment", "--target", "x")
    assert code == 2 and "comma-separated" in err


@pytest.mark.parametrize("method,extra", [("additive", ["--dataset", "sentiment", "--strength", "0"]),
                                         ("jacobian", ["--steer-text", "The Golden Gate", "--lam", "1"]),
                                         ("lqr", ["--dataset", "sentiment", "--q", "0", "--qf", "0"]),
                                         ("llv", ["--dataset", "sentiment", "--dy", "0", "--order", "4"])])
def test_steer_at_zero_strength_gives_the_unsteered_text(capsys, tiny_dirs, method, extra):
    args = ("steer", "--model", str(tiny_dirs["llama"]), "--prompt", "The movie was", "--method", method,
            "--sizes", "6,4,3", "--max-new-tokens", "5", "--json", "-", "--quiet", *extra)
    code, out, _ = _run(capsys, *args)
    assert code == 0
    payload = json.loads(out)
    assert payload["steered"] == payload["unsteered"]
    if method != "jacobian":
        assert len(payload["readout_steered"]) == len(payload["steered_tokens"])
        assert payload["readout_steered"] == payload["readout_unsteered"]
    code, _, err = _run(capsys, "steer", "--model", str(tiny_dirs["llama"]), "--prompt", "x", "--method", "lqr")
    assert code == 2 and "dataset" in err
