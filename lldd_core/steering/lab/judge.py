"""An external judge: any local Hugging Face sequence-classification model (a directory, or a hub id already in
the local cache), asked for the probability of the target class of each continuation.

Loaded the safe way (safetensors only, no remote code, never downloaded); a model that cannot be loaded, or
whose labels do not name the target class, is one :class:`~lldd_core.errors.InputError` line saying what to do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ...errors import InputError
from ...models.loading import local_revision


@dataclass
class Judge:
    """A loaded classifier, its tokenizer, the index of the target label and its identity for the cache key."""

    model: Any
    tokenizer: Any
    target: int
    label: str
    revision: str

    def probability(self, texts: list[str]) -> np.ndarray:
        """``[N]`` the classifier's probability of the target label for each text (one text at a time:
        the answer does not depend on the other texts)."""
        out = []
        with torch.no_grad():
            for text in texts:
                enc = self.tokenizer(text if text.strip() else " ", return_tensors="pt", truncation=True)
                logits = self.model(**enc).logits[0].double()
                out.append(float(torch.softmax(logits, -1)[self.target]))
        return np.asarray(out, dtype=np.float64)


def judge_revision(path: str) -> str:
    """What keys a judge's verdicts: the sha256 of a local directory's config and weights, else its id."""
    folder = Path(path).expanduser()
    return local_revision(folder) if folder.is_dir() else f"id:{path}"


def load_judge(path: str, classes: tuple[str, str], label: str | None = None) -> Judge:
    """The classifier at ``path`` (module doc); ``label``: its label of the target class (default: the first of
    ``classes``, the dataset's target class, matched case-insensitively to the classifier's labels)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where = str(Path(path).expanduser()) if Path(path).expanduser().is_dir() else path
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            where, local_files_only=True, use_safetensors=True, trust_remote_code=False).eval()
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=True, trust_remote_code=False)
    except Exception as err:  # noqa: BLE001  (any load failure is the user's path or files)
        reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        raise InputError(f"Could not load the classifier {path!r} (a local sequence-classification model with "
                         f"safetensors weights and its tokenizer is needed): {reason}") from None
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token
    names = {int(i): str(n) for i, n in (model.config.id2label or {}).items()}
    wanted = (label or classes[0]).strip().lower()
    found = [i for i, n in names.items() if n.strip().lower() == wanted]
    if not found:
        raise InputError(f"The classifier {path!r} has no label {wanted!r} (its labels: "
                         f"{', '.join(names.values()) or 'none'}): give its label of the target class.")
    return Judge(model, tokenizer, found[0], names[found[0]], judge_revision(path))
