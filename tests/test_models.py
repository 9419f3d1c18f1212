"""Loading: local directories and hub ids, resolved revisions, safe defaults, clear errors."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError
from transformers import OPTConfig

from lldd_core.errors import InputError, ModelLoadError, ResourceError, UnsupportedFamilyError
from lldd_core.models.loading import ModelSpec, explain_load_error, load_model, local_revision, resolve_model
from tests.tiny import build_model, build_tokenizer


def test_load_local_directory(tiny_dirs):
    handle = load_model(ModelSpec(str(tiny_dirs["qwen3"]), dtype="float64", device="cpu"))
    assert handle.model.dtype == torch.float64
    assert not handle.model.training
    assert not any(p.requires_grad for p in handle.model.parameters())
    assert handle.revision.startswith("sha256:")
    assert handle.n_layers == handle.info.n_layers == 2
    assert handle.device == torch.device("cpu")


def test_local_revision_is_a_content_hash(tiny_dirs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_dirs["llama"], copy)
    assert local_revision(copy) == local_revision(tiny_dirs["llama"])  # content, not path
    build_model("llama", seed=1).save_pretrained(copy)  # other weights
    assert local_revision(copy) != local_revision(tiny_dirs["llama"])


def test_local_revision_memo_skips_rehashing(tiny_dirs):
    memo: dict = {}
    first = local_revision(tiny_dirs["gpt2"], memo)
    assert len(memo) == 1
    memo[next(iter(memo))] = "sha256:remembered"
    assert local_revision(tiny_dirs["gpt2"], memo) == "sha256:remembered"
    assert first.startswith("sha256:")


def test_missing_directory():
    with pytest.raises(ModelLoadError, match="No model directory"):
        resolve_model(ModelSpec("/no/such/model"))


def test_unknown_hub_id_offline():
    with pytest.raises(ModelLoadError, match="cannot be reached|neither a local directory|HF_HUB_OFFLINE is set"):
        resolve_model(ModelSpec("nobody-here/no-such-model-xyz"))


def test_unsupported_family_lists_supported(tmp_path):
    OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
              word_embed_proj_dim=16).save_pretrained(tmp_path)
    with pytest.raises(UnsupportedFamilyError, match="'opt' is not supported.*GPT-2.*Llama.*OLMo 2"):
        resolve_model(ModelSpec(str(tmp_path)))


def test_remote_code_is_refused_by_default(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"model_type": "custom_xyz", "auto_map": {"AutoConfig": "configuration_x.XConfig"}}))
    with pytest.raises(ModelLoadError, match="trust remote code"):
        resolve_model(ModelSpec(str(tmp_path)))


def test_pickled_weights_need_opt_in(tmp_path):
    model = build_model("gpt2")
    model.config.save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="no safetensors weights"):
        load_model(ModelSpec(str(tmp_path), device="cpu"))
    handle = load_model(ModelSpec(str(tmp_path), device="cpu", allow_pickle=True))
    torch.testing.assert_close(handle.model.lm_head.weight, model.lm_head.weight)


def test_bad_dtype_and_device(tiny_dirs):
    with pytest.raises(InputError, match="dtype"):
        resolve_model(ModelSpec(str(tiny_dirs["gpt2"]), dtype="int8"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA"):
            load_model(ModelSpec(str(tiny_dirs["gpt2"]), device="cuda"))


def _response(status: int) -> SimpleNamespace:
    """Just what the hub's error classes read from an HTTP response."""
    return SimpleNamespace(status_code=status, headers={}, request=None)


def test_gated_and_unknown_messages():
    gated = OSError("You are trying to access a gated repo.")
    gated.__cause__ = GatedRepoError("403 restricted", response=_response(403))
    assert "gated model" in str(explain_load_error("meta-llama/x", None, gated))
    missing = OSError("x is not a local folder and is not a valid model identifier")
    missing.__cause__ = RepositoryNotFoundError("404", response=_response(404))
    assert "neither a local directory nor a model id" in str(explain_load_error("x/y", None, missing))


def test_out_of_memory_message():
    err = explain_load_error("big/model", None, RuntimeError("CUDA out of memory. Tried to allocate 20 GiB"))
    assert isinstance(err, ResourceError) and "smaller model" in str(err)


def test_prompt_validation(tiny_dirs):
    info = resolve_model(ModelSpec(str(tiny_dirs["gpt2"])))
    with pytest.raises(InputError, match="empty"):
        info.encode("   ")
    with pytest.raises(InputError, match="at most 64"):
        info.encode("word " * 200)
    assert info.token_strings(info.encode("The Golden Gate")) == ["The", " Golden", " Gate"]


def test_device_map_loading_matches_plain(tiny_dirs):
    """``device='map'`` goes through accelerate's device_map="auto" (all on CPU here)."""
    from lldd_core.forward.jacobian import jacobian_operator, reconstruct, relative_error

    plain = load_model(ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu"))
    mapped = load_model(ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="map"))
    ids = torch.tensor(plain.info.encode("The Golden Gate"))
    a = jacobian_operator(plain.model, plain.adapter, ids).full()
    op = jacobian_operator(mapped.model, mapped.adapter, ids)
    b = op.full()
    torch.testing.assert_close(a.J, b.J)
    assert relative_error(op.y, reconstruct(b.J, op.x0, b.b)) < 1e-10


def test_unknown_device_is_reported_early(tiny_dirs):
    with pytest.raises(InputError, match="Unknown device"):
        resolve_model(ModelSpec(str(tiny_dirs["gpt2"]), device="tpu9"))
