"""The one layer numbering everything a user sees follows (pages, CLI, JSON fields, plot axes).

The residual stream is indexed by ``l = 0..L``: ``x_0`` is the embedding output (the input of block 0),
``x_l`` the input of block ``l`` and the output of block ``l - 1``, ``x_L`` the output of the last block
(before the final norm). Block ``b`` (``0..L-1``) reads ``x_b`` and writes ``x_{b+1}``.

"Layer ``l``" always means ``x_l``. A view of one block (its Jacobian ``x_b → x_{b+1}``, the attention or
MLP term it adds) is named by its block index ``b``; the cumulative map ``x_0 → x_l`` by ``l``.
"""

from __future__ import annotations

#: Sites that are views of one block: named by the block index ``b = k - 1``, not by the layer ``k``.
BLOCK_SITES: tuple[str, ...] = ("block", "attention", "mlp")
SITE_LABELS = {
    "cumulative": "cumulative x_0 → x_l (layer l)",
    "block": "single block b: x_b → x_{b+1}",
    "attention": "attention term of block b (into x_{b+1})",
    "mlp": "MLP term of block b (into x_{b+1})",
}


def layer_axis(detail: str = "residual stream x_l") -> str:
    """The title of an axis over layers ``l`` (ticks ``0..L`` or a part of it)."""
    return f"layer l ({detail})"


def block_axis(detail: str = "x_b → x_{b+1}") -> str:
    """The title of an axis over blocks ``b`` (ticks ``0..L-1`` or a part of it)."""
    return f"block b ({detail})"


def stream(layer: int) -> str:
    """``x_l`` written out for layer ``layer``."""
    return f"x_{layer}"


def block_map(block: int) -> str:
    """``block b: x_b → x_{b+1}`` written out for block ``block``."""
    return f"block {block}: x_{block} → x_{block + 1}"


def depth(n_layers: int) -> str:
    """A model's depth in these terms: ``12 blocks (layers x_0..x_12)``."""
    return f"{n_layers} block{'' if n_layers == 1 else 's'} (layers x_0..x_{n_layers})"
