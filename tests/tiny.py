"""Tiny random models of every supported family, saved as real Hugging Face directories.

Nothing is downloaded: configs are built from config classes, the tokenizer is a byte-level BPE
trained here on a few sentences. Weights are scaled up (initializer_range 0.2) so the models are
visibly nonlinear, and biases and norm weights are randomized (Hugging Face initializes them to 0
and 1, which would leave the bias channel and Gemma's ``1 + w`` untested).
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Cohere2Config,
    Gemma2Config,
    Gemma3Config,
    Gemma3TextConfig,
    GPT2Config,
    GPTNeoXConfig,
    GptOssConfig,
    GraniteConfig,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    Olmo2Config,
    Olmo3Config,
    OlmoeConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SiglipVisionConfig,
    SmolLM3Config,
    StableLmConfig,
    Starcoder2Config,
)

VOCAB = 320
CORPUS = [
    "The Golden Gate Bridge is in San Francisco.",
    "The bridge out of Marin is the Golden Gate.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "The cat says meow and the dog says woof.",
    "This restaurant was wonderful, the food was great and the staff were kind.",
    "Please could you pass the salt? Thank you very much.",
] * 20

COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              max_position_embeddings=64, initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
              tie_word_embeddings=False)

#: family -> (config, has_biases). Sliding windows (4) are shorter than the test prompts.
CONFIGS = {
    "gpt2": (GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.2,
                        bos_token_id=1, eos_token_id=2, activation_function="gelu_new"), True),
    "gpt_neox": (GPTNeoXConfig(**COMMON, rotary_pct=0.5, use_parallel_residual=True, hidden_act="gelu"), True),
    "llama": (LlamaConfig(**COMMON, num_key_value_heads=2), False),
    "mistral": (MistralConfig(**COMMON, num_key_value_heads=2, sliding_window=4), False),
    "qwen2": (Qwen2Config(**COMMON, num_key_value_heads=2), True),
    "qwen3": (Qwen3Config(**COMMON, num_key_value_heads=2, head_dim=8), False),
    "gemma2": (Gemma2Config(**COMMON, num_key_value_heads=2, head_dim=8, sliding_window=4, query_pre_attn_scalar=8,
                            attn_logit_softcapping=20.0, final_logit_softcapping=30.0), False),
    "gemma3_text": (Gemma3TextConfig(**{**COMMON, "num_hidden_layers": 3}, num_key_value_heads=2, head_dim=8,
                                     sliding_window=4, query_pre_attn_scalar=8,
                                     layer_types=["sliding_attention", "full_attention", "sliding_attention"]), False),
    "phi3": (Phi3Config(**COMMON, num_key_value_heads=2, partial_rotary_factor=0.5), False),
    "olmo2": (Olmo2Config(**COMMON, num_key_value_heads=2), False),
    # issue 19: dense families
    "granite": (GraniteConfig(**COMMON, num_key_value_heads=2, embedding_multiplier=3.0, residual_multiplier=0.4,
                              attention_multiplier=0.2, logits_scaling=2.5), False),
    "smollm3": (SmolLM3Config(**{**COMMON, "num_hidden_layers": 3}, num_key_value_heads=2, no_rope_layer_interval=2,
                              use_sliding_window=True, sliding_window=4), False),  # layer 1 has no rotary
    "olmo3": (Olmo3Config(**COMMON, num_key_value_heads=2, sliding_window=4,
                          layer_types=["sliding_attention", "full_attention"]), False),
    "starcoder2": (Starcoder2Config(**COMMON, num_key_value_heads=2, sliding_window=4, use_bias=True), True),
    "stablelm": (StableLmConfig(**COMMON, num_key_value_heads=2, partial_rotary_factor=0.5, use_qkv_bias=True,
                                qk_layernorm=True), True),
    "cohere2": (Cohere2Config(**COMMON, num_key_value_heads=2, sliding_window=4, logit_scale=0.3,
                              layer_types=["sliding_attention", "full_attention"]), False),
    "gemma3": (Gemma3Config(text_config={**COMMON, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4,
                                         "query_pre_attn_scalar": 8,
                                         "layer_types": ["sliding_attention", "full_attention"]},
                            vision_config=SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                             num_attention_heads=2, image_size=28, patch_size=14),
                            mm_tokens_per_image=4, initializer_range=0.2, tie_word_embeddings=False), False),
    # issue 19: mixture-of-experts (4 experts, top-2; the initializer's routers, std 0.2, pick all four)
    "mixtral": (MixtralConfig(**COMMON, num_key_value_heads=2, num_local_experts=4, num_experts_per_tok=2,
                              sliding_window=4), False),
    "qwen3_moe": (Qwen3MoeConfig(**COMMON, num_key_value_heads=2, head_dim=8, num_experts=4, num_experts_per_tok=2,
                                 moe_intermediate_size=16, norm_topk_prob=True), False),
    "qwen2_moe": (Qwen2MoeConfig(**COMMON, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2,
                                 moe_intermediate_size=16, shared_expert_intermediate_size=32), True),
    "olmoe": (OlmoeConfig(**COMMON, num_key_value_heads=2, num_experts=4, num_experts_per_tok=2), False),
    # swiglu_limit 1: the clamps are active at these weights
    "gpt_oss": (GptOssConfig(**COMMON, num_key_value_heads=2, head_dim=8, num_local_experts=4, num_experts_per_tok=2,
                             sliding_window=4, swiglu_limit=1.0,
                             rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 4.0,
                                              "original_max_position_embeddings": 16, "beta_fast": 32.0,
                                              "beta_slow": 1.0},
                             layer_types=["sliding_attention", "full_attention"]), True),
}
FAMILIES = tuple(CONFIGS)
BIASED = tuple(f for f, (_, b) in CONFIGS.items() if b)
#: The mixture-of-experts families (issue 19).
MOE = ("mixtral", "qwen3_moe", "qwen2_moe", "olmoe", "gpt_oss")

#: 13+ tokens for every family: longer than every sliding window.
PROMPT = "The Golden Gate Bridge is in San Francisco and"


def build_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def build_model(family: str, seed: int = 0) -> torch.nn.Module:
    config, _ = CONFIGS[family]
    torch.manual_seed(seed)
    return randomized(AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval())


def randomized(model: torch.nn.Module, norms: bool = True) -> torch.nn.Module:
    """``model`` with random non-zero biases and (``norms``) perturbed norm weights, so that the bias
    channel and the norm scales are generic rather than the initializer's zeros and ones."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.2)
            elif norms and p.ndim == 1:  # norm weights
                p.add_(torch.randn_like(p) * 0.2)
    return model


def save_tiny(family: str, directory: Path, seed: int = 0) -> Path:
    """Save a tiny random model of ``family`` and the shared tokenizer to ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    build_model(family, seed).save_pretrained(directory)
    build_tokenizer().save_pretrained(directory)
    return directory
