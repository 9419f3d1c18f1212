"""The attribution graph result: nodes and edges as arrays, lldd's JSON, the Neuronpedia JSON, predictions.

Node ``i`` has a kind (embedding / bias / neuron / logit), a layer (block index from 0; ``-1`` for
embeddings; ``n_layers`` for logits and the final norm's bias), a position (``-1`` for biases), an
index (neuron index; token id for embeddings and logits) and an activation (the neuron value, the
raw logit, ``|x_0|`` at the position for embeddings, 1 for a bias). Edge ``k`` runs from
``edge_source[k]`` to ``edge_target[k]`` with weight ``edge_weight[k]`` (``value * derivative``).

Decodings (:mod:`lldd_core.analysis.graph_decode`) are kept per ``(layer, neuron)``, shared by the
neuron's nodes at every position: row ``r`` of ``decoded_ids`` / ``decoded_scores`` / ``decoded_tokens``
belongs to neuron ``decoded_index[r]`` of block ``decoded_layer[r]``, slot ``s`` is ``decode_kinds[s]``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ..store.results import Result, result_type

KIND_EMBEDDING, KIND_BIAS, KIND_NEURON, KIND_LOGIT = 0, 1, 2, 3
KIND_NAMES = ("embedding", "bias", "neuron", "logit")


@result_type
class GraphResult(Result):
    """An attribution graph of ``N`` nodes and ``E`` edges (module doc); the summary counts them."""

    node_kind: np.ndarray  # [N] int8, KIND_*
    node_layer: np.ndarray  # [N]
    node_position: np.ndarray  # [N]
    node_index: np.ndarray  # [N]
    node_activation: np.ndarray  # [N] float64
    node_influence: np.ndarray  # [N] influence on the targets (filled by pruning; 0 when unpruned)
    node_visited: np.ndarray  # [N] bool: the node's incoming edges were computed
    edge_source: np.ndarray  # [E]
    edge_target: np.ndarray  # [E]
    edge_weight: np.ndarray  # [E] float64
    token_ids: list[int]
    target_ids: list[int]
    target_probs: list[float]
    n_layers: int
    d_mlp: int
    pruned: bool
    node_threshold: float
    edge_threshold: float
    replacement_score: float
    kept_logits: list[float] = dataclasses.field(default_factory=list)
    node_influence_kept: float = 1.0
    edge_score_kept: float = 1.0
    tokens: list[str] = dataclasses.field(default_factory=list)
    target_tokens: list[str] = dataclasses.field(default_factory=list)
    model: str = ""
    # [N] sum of a visited node's incoming edges left out (graph.assemble's edges_per_row); empty: none left out
    node_rest: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    decode_kinds: list[str] = dataclasses.field(default_factory=list)
    decoded_layer: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # [D]
    decoded_index: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))  # [D]
    decoded_ids: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0), np.int64))  # [D, S, n]
    decoded_scores: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros((0, 0, 0)))  # [D, S, n]
    decoded_tokens: list = dataclasses.field(default_factory=list)  # [D][S][n] token strings

    def validate(self) -> None:
        """Consistent shapes (the cache calls this before storing and after reading); ``ValueError`` otherwise."""
        n, e, d = len(self.node_kind), self.edge_weight.size, self.decoded_layer.size
        if any(len(a) != n for a in (self.node_layer, self.node_position, self.node_index, self.node_activation,
                                     self.node_influence, self.node_visited)) or self.node_rest.size not in (0, n):
            raise ValueError("node arrays of different lengths")
        if self.edge_source.size != e or self.edge_target.size != e or (e and (
                max(self.edge_source.max(), self.edge_target.max()) >= n or min(self.edge_source.min(),
                                                                                self.edge_target.min()) < 0)):
            raise ValueError("edges out of range")
        if self.decoded_index.size != d or self.decoded_ids.shape != self.decoded_scores.shape or (d and (
                self.decoded_ids.shape[:2] != (d, len(self.decode_kinds)) or len(self.decoded_tokens) != d)):
            raise ValueError("decodings of inconsistent shape")

    # --- ids and plain lists -----------------------------------------------------------------
    def node_id(self, i: int) -> str:
        kind, layer, pos, idx = (int(self.node_kind[i]), int(self.node_layer[i]), int(self.node_position[i]),
                                 int(self.node_index[i]))
        return {KIND_EMBEDDING: f"E_{pos}", KIND_BIAS: f"B_{layer}", KIND_NEURON: f"N_{layer}_{pos}_{idx}",
                KIND_LOGIT: f"L_{idx}"}[kind]

    def node_label(self, i: int) -> str:
        """The node's id with what it stands for: an embedding's token (``E_5 ' Marin'``), a decoded neuron's
        strongest raised token (``N_2_7_83 +' Golden'``), a logit's token (``L_1197 ' Golden'``)."""
        pos, kind = int(self.node_position[i]), int(self.node_kind[i])
        if kind == KIND_EMBEDDING and self.tokens and 0 <= pos < len(self.tokens):
            return f"{self.node_id(i)} {self.tokens[pos]!r}"
        if kind == KIND_LOGIT and self.target_tokens and int(self.node_index[i]) in self.target_ids:
            return f"{self.node_id(i)} {self.target_tokens[self.target_ids.index(int(self.node_index[i]))]!r}"
        dec = self.decoding(i) if kind == KIND_NEURON else None
        if dec and dec.get("out+"):
            return f"{self.node_id(i)} +{dec['out+'][0][0]!r}"
        return self.node_id(i)

    def find(self, kind: int, layer: int, position: int, index: int) -> int:
        """The node number of a node given by its fields (``ValueError`` when absent)."""
        hit = np.nonzero((self.node_kind == kind) & (self.node_layer == layer) & (self.node_position == position)
                         & (self.node_index == index))[0]
        if hit.size == 0:
            raise ValueError("no such node in the graph")
        return int(hit[0])

    def nodes(self) -> list[dict[str, Any]]:
        """Node dicts; decoded neurons carry ``decodings``: ``{kind: [[token, score], ...]}``."""
        rows = self.decoding_rows()
        out = []
        for i in range(len(self.node_kind)):
            node = {"id": self.node_id(i), "kind": KIND_NAMES[int(self.node_kind[i])], "layer": int(self.node_layer[i]),
                    "position": int(self.node_position[i]), "index": int(self.node_index[i]),
                    "activation": float(self.node_activation[i]), "influence": float(self.node_influence[i])}
            dec = self.decoding(i, rows)
            if dec is not None:
                node["decodings"] = {k: [[t, s] for t, s in v] for k, v in dec.items()}
            out.append(node)
        return out

    # --- decodings ---------------------------------------------------------------------------
    def decoding_rows(self) -> dict[tuple[int, int], int]:
        """``(layer, neuron) -> row`` of the decoding arrays."""
        return {(int(la), int(ix)): r for r, (la, ix) in enumerate(zip(self.decoded_layer, self.decoded_index,
                                                                         strict=True))}

    def decoding(self, node: int, rows: dict[tuple[int, int], int] | None = None
                 ) -> dict[str, list[tuple[str, float]]] | None:
        """A neuron node's decodings, ``{kind: [(token, score), ...]}`` best first; ``None`` when it has none."""
        if int(self.node_kind[node]) != KIND_NEURON:
            return None
        r = (self.decoding_rows() if rows is None else rows).get((int(self.node_layer[node]),
                                                                   int(self.node_index[node])))
        if r is None:
            return None
        return {k: [(str(t), float(s)) for t, s in zip(self.decoded_tokens[r][j], self.decoded_scores[r, j],
                                                        strict=True)]
                for j, k in enumerate(self.decode_kinds)}

    def edges(self) -> list[dict[str, Any]]:
        ids = [self.node_id(i) for i in range(len(self.node_kind))]
        return [{"source": ids[s], "target": ids[t], "weight": float(w)}
                for s, t, w in zip(self.edge_source, self.edge_target, self.edge_weight, strict=True)]

    def incoming_sums(self) -> np.ndarray:
        """For every node, the sum of its incoming edges (plus ``node_rest``: its activation for visited nodes)."""
        return np.bincount(self.edge_target, weights=self.edge_weight, minlength=len(self.node_kind))

    def summary(self) -> dict[str, Any]:
        """Small JSON-able facts for the CLI: counts and thresholds, none of the arrays or token lists."""
        counts = {name: int((self.node_kind == k).sum()) for k, name in enumerate(KIND_NAMES)}
        return {"model": self.model, "n_tokens": len(self.token_ids), "tokens": self.tokens, "targets": self.target_ids,
                "target_tokens": self.target_tokens, "target_probs": self.target_probs, "nodes": counts,
                "edges": int(self.edge_weight.size), "visited": int(self.node_visited.sum()), "pruned": self.pruned,
                "node_threshold": self.node_threshold, "edge_threshold": self.edge_threshold,
                "replacement_score": self.replacement_score}

    def top_paths(self) -> list[dict[str, Any]]:
        """Each target logit's :meth:`top_path`: the target token, the node ids source first, the share of the
        logit the path carries."""
        out = []
        for j, node in enumerate(np.nonzero(self.node_kind == KIND_LOGIT)[0]):
            path, share = self.top_path(int(node))
            token = self.target_tokens[j] if self.target_tokens else str(self.target_ids[j])
            out.append({"target": token, "path": [self.node_id(n) for n in path],
                        "labels": [self.node_label(n) for n in path], "share": share})
        return out

    def to_json(self) -> dict[str, Any]:
        """lldd's graph JSON: the summary, ``top_path`` (per target), ``nodes`` and ``edges``."""
        return {**self.summary(), "top_path": self.top_paths(), "nodes": self.nodes(), "edges": self.edges()}

    def top_path(self, target: int) -> tuple[list[int], float]:
        """The path carrying the largest share of node ``target``'s value (node numbers, source first) and that share.

        The detached map is linear, so node ``t``'s value is the sum of its incoming edges, and an edge
        ``s -> t`` carries the fraction ``f_e = w_e / v_t`` of it. A path's contribution to its end is
        ``v_end * prod_e f_e``, and over all source-to-target paths of the complete graph these contributions
        sum to the target's value exactly; the share is ``prod_e f_e`` (signed: a path that opposes the
        target has a negative share). Maximized exactly by dynamic programming in layer order, keeping each
        node's largest and smallest share (a negative edge turns one into the other).
        """
        kind, value = self.node_kind, self.node_activation
        t_all = self.edge_target
        frac = np.where(value[t_all] != 0, self.edge_weight / np.where(value[t_all] != 0, value[t_all], 1.0), 0.0)
        source = np.isin(kind, (KIND_EMBEDDING, KIND_BIAS))
        hi, lo = np.where(source, 1.0, -np.inf), np.where(source, 1.0, np.inf)
        came_hi, came_lo = np.full(len(kind), -1), np.full(len(kind), -1)
        hi_from_hi, lo_from_hi = np.zeros(len(kind), bool), np.zeros(len(kind), bool)
        inner = (kind == KIND_NEURON) | (kind == KIND_LOGIT)
        rank = np.where(kind == KIND_LOGIT, self.n_layers + 1, self.node_layer)
        for layer in sorted(set(rank[inner].tolist())):
            sel = np.nonzero(inner[t_all] & (rank[t_all] == layer) & np.isfinite(hi[self.edge_source]))[0]
            if not sel.size:
                continue
            s, t, f = self.edge_source[sel], t_all[sel], frac[sel]
            a, b = hi[s] * f, lo[s] * f  # the source's largest and smallest share, carried on
            for cand, from_hi, best, came, flag, sign in ((np.maximum(a, b), a >= b, hi, came_hi, hi_from_hi, 1.0),
                                                          (np.minimum(a, b), a <= b, lo, came_lo, lo_from_hi, -1.0)):
                order = np.lexsort((sign * cand, t))  # by target, then score: each target's best edge comes last
                win = order[np.r_[t[order][1:] != t[order][:-1], True]]
                better = sign * cand[win] > sign * best[t[win]]
                won = win[better]
                best[t[won]], came[t[won]], flag[t[won]] = cand[won], s[won], from_hi[won]
        if not np.isfinite(hi[target]):
            return [int(target)], 0.0
        path, use_hi = [int(target)], True
        while (came_hi if use_hi else came_lo)[path[-1]] >= 0:
            node = path[-1]
            path.append(int((came_hi if use_hi else came_lo)[node]))
            use_hi = bool((hi_from_hi if use_hi else lo_from_hi)[node])
        return path[::-1], float(hi[target])

    # --- interventions -----------------------------------------------------------------------
    def predict_intervention(self, factors: dict[int, float]) -> np.ndarray:
        """The graph's linear prediction of the target logits' change when neurons (node numbers) are scaled.

        A scaled neuron becomes ``alpha * (v + delta_in)``; every visited neuron and logit changes by
        ``sum_e w_e * delta_src / v_src`` over its incoming neuron edges (the detached map is linear
        and ``w_e / v_src`` is the derivative), in layer order. Exact for the detached map when every
        neuron on a path was visited and kept; unvisited neurons are held fixed.
        """
        delta = np.zeros(len(self.node_kind))
        value = self.node_activation
        safe = np.where(value != 0, value, 1.0)
        neuron_src = self.node_kind[self.edge_source] == KIND_NEURON
        for layer in range(self.n_layers + 1):  # neurons only read lower layers
            at = (self.node_layer == layer) & ((self.node_kind == KIND_NEURON) | (self.node_kind == KIND_LOGIT))
            sel = neuron_src & at[self.edge_target] & self.node_visited[self.edge_target]
            inc = np.bincount(self.edge_target[sel], minlength=len(delta),
                              weights=self.edge_weight[sel] * delta[self.edge_source[sel]] / safe[self.edge_source[sel]])
            delta = np.where(at, inc, delta)
            for i, a in factors.items():
                if int(self.node_layer[i]) == layer:
                    delta[i] = a * (value[i] + delta[i]) - value[i]
        logits = np.nonzero(self.node_kind == KIND_LOGIT)[0]
        return delta[logits]

    # --- Neuronpedia / circuit-tracer format ---------------------------------------------------
    def to_neuronpedia(self, slug: str = "lldd-graph") -> dict[str, Any]:
        """The graph in the circuit-tracer / Neuronpedia graph JSON schema (metadata, qParams, nodes, links).

        Neurons are written as that viewer's feature nodes (``{layer}_{neuron}_{pos}``), embeddings as
        ``E_{token}_{pos}``, logits as ``{n_layers+1}_{token}_{pos}``; a bias node, a constant like
        their error nodes, is written as one (``{layer}_-1_0``) with a clerp saying it is a bias.
        """
        T = len(self.token_ids)
        tokens = self.tokens or [str(t) for t in self.token_ids]
        rows = self.decoding_rows()
        ids, out = [], []
        for i in range(len(self.node_kind)):
            kind, layer, pos, idx = (int(self.node_kind[i]), int(self.node_layer[i]), int(self.node_position[i]),
                                     int(self.node_index[i]))
            act, infl = float(self.node_activation[i]), float(self.node_influence[i])
            if kind == KIND_NEURON:
                nid, js = f"{layer}_{idx}_{pos}", f"{layer}_{idx}-0"
                dec = self.decoding(i, rows)  # the viewer shows the clerp as the node's label: its top output tokens
                says = f": writes {', '.join(repr(t) for t, _ in dec['out+'][:3])}" if dec else ""
                node = {"feature": (layer + idx) * (layer + idx + 1) // 2 + idx, "layer": str(layer), "ctx_idx": pos,
                        "feature_type": "cross layer transcoder", "clerp": f"MLP neuron {layer}/{idx}{says}"}
            elif kind == KIND_EMBEDDING:
                nid, js = f"E_{idx}_{pos}", f"E_{idx}-{pos}"
                node = {"feature": pos, "layer": "E", "ctx_idx": pos, "feature_type": "embedding", "clerp": ""}
            elif kind == KIND_BIAS:
                nid, js = f"{layer}_-1_0", f"{layer}_-1-0"
                node = {"feature": -1, "layer": str(layer), "ctx_idx": 0, "feature_type": "mlp reconstruction error",
                        "clerp": f"bias (constant) of block {layer}" if layer < self.n_layers else "final bias"}
            else:
                j = self.target_ids.index(idx)
                name = self.target_tokens[j] if self.target_tokens else str(idx)
                p = self.target_probs[j]
                nid, js = f"{self.n_layers + 1}_{idx}_{T - 1}", f"L_{idx}-{T - 1}"
                node = {"feature": idx, "layer": str(self.n_layers + 1), "ctx_idx": T - 1, "feature_type": "logit",
                        "token_prob": p, "is_target_logit": True, "clerp": f'Output "{name}" (p={p:.3f})'}
            ids.append(nid)
            out.append({"node_id": nid, "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                        **node, "jsNodeId": js, "influence": infl, "activation": act})
        links = [{"source": ids[s], "target": ids[t], "weight": float(w)}
                 for s, t, w in zip(self.edge_source, self.edge_target, self.edge_weight, strict=True)]
        metadata = {"slug": slug, "scan": self.model or "lldd", "transcoder_list": [], "prompt_tokens": tokens,
                    "prompt": "".join(tokens), "node_threshold": self.node_threshold, "schema_version": 1,
                    "info": {"creator_name": "lldd", "generator": {"name": "lldd exact attribution graph"},
                             "replacement_score": self.replacement_score}}
        qparams = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
        return {"metadata": metadata, "qParams": qparams, "nodes": out, "links": links}
