"""Shared test helpers: load a saved tiny model, encode the standard prompt."""

from __future__ import annotations

from pathlib import Path

import torch

from lldd_core.models.loading import ModelHandle, ModelSpec, load_model
from tests.tiny import PROMPT


def load(path: Path, dtype: str = "float64") -> ModelHandle:
    return load_model(ModelSpec(str(path), dtype=dtype, device="cpu"))


def prompt_ids(handle: ModelHandle, prompt: str = PROMPT) -> torch.Tensor:
    return torch.tensor(handle.info.encode(prompt))


def normal_output(handle: ModelHandle, ids: torch.Tensor) -> torch.Tensor:
    """The stock model's last-token output embedding (final norm applied), default attention."""
    with torch.no_grad():
        return handle.model.get_decoder()(ids[None]).last_hidden_state[0, -1]
