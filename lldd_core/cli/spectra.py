"""Commands on one prompt: ``jacobian``, ``graph``, ``spectrum``, ``layers``."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from .. import ranges as R
from ..analysis.settings import (
    SITES,
    SPECTRUM_METHODS,
    GraphSettings,
    JacobianSettings,
    LayersSettings,
    SpectrumSettings,
)
from ..layering import BLOCK_SITES, SITE_LABELS
from .common import (
    Progress,
    add_model_args,
    cell_text,
    emit_json,
    first_use_build,
    model_spec,
    number_option,
    report,
    run_analysis,
    stored_note,
    warn_not_cached,
)

if TYPE_CHECKING:  # imported lazily at run time: `--help` should not wait for torch
    from ..analysis.layers import LayersResult
    from ..analysis.spectrum import SpectrumResult


def cmd_jacobian(args: argparse.Namespace) -> int:
    from ..service import get_service

    start = time.perf_counter()
    spec = model_spec(args)
    progress = Progress(not args.quiet)
    try:
        with first_use_build(spec, args.quiet):
            service = get_service()
            R.TOP_K.check(args.top_k, hi=service.info(spec, progress).d_model)  # before any work
            settings = JacobianSettings(layer=args.layer, final_norm=not args.no_final_norm)
            computed = service.jacobian(spec, args.prompt, settings, progress=progress)
    finally:
        progress.close()
    r = computed.result
    payload = {
        "model": r.model,
        "revision": r.revision,
        "dtype": r.dtype,
        "family": r.family,
        "tokens": r.tokens,
        "input_ids": r.input_ids,
        "layer": r.layer,
        "n_layers": r.n_layers,
        "final_norm": r.final_norm,
        "reconstruction_error": r.reconstruction_error,
        "plain_reconstruction_error": r.plain_reconstruction_error,
        "detached_vs_normal": r.detached_vs_normal,
        "bias_norm": r.bias_norm,
        "plain_bias_norm": r.plain_bias_norm,
        "output_norm": r.output_norm,
        "token_contributions": r.token_contributions.tolist(),
        "singular_values": r.top_singular_values(args.top_k),
        "stable_rank": r.stable_rank.tolist(),
        "compute_s": r.elapsed_s,
        "elapsed_s": time.perf_counter() - start,
        "cache_hit": computed.cache_hit,
    }
    warn_not_cached(computed)
    if args.json:
        emit_json(payload, args.json, stored_note(computed))
        if args.json == "-":
            return 0
    _print_jacobian(payload, args.top_k)
    return 0


def _print_jacobian(p: dict[str, Any], k: int) -> None:
    out = sys.stdout
    out.write(f"model      {p['model']} ({p['family']}) @ {p['revision']}  dtype {p['dtype']}\n")
    out.write(f"output     x_{p['layer']} (layer {p['layer']} of 0..{p['n_layers']})"
              f"{' + final norm' if p['final_norm'] else ''}, last token\n")
    out.write(f"tokens     {len(p['tokens'])}: {' | '.join(repr(t) for t in p['tokens'])}\n")
    out.write(f"reconstruction error  detached {p['reconstruction_error']:.3e}   ordinary {p['plain_reconstruction_error']:.3e}\n")
    out.write(f"detached vs normal output  {p['detached_vs_normal']:.3e}\n")
    out.write(f"||y|| {p['output_norm']:.4g}   bias channel ||b|| {p['bias_norm']:.4g} (ordinary {p['plain_bias_norm']:.4g})\n")
    out.write(f"top-{k} singular values per token:\n")
    width = max(len(repr(t)) for t in p["tokens"])
    for i, (tok, sv) in enumerate(zip(p["tokens"], p["singular_values"])):
        out.write(f"  {i:>3} {tok!r:<{width}}  " + " ".join(f"{v:.3e}" for v in sv) + "\n")
    out.write(f"{'cache hit' if p['cache_hit'] else 'computed'} in {p['elapsed_s']:.2f} s\n")

def cmd_graph(args: argparse.Namespace) -> int:
    """Exact attribution graph (lldd_core.analysis.graph): lldd's JSON to --json, the Neuronpedia JSON to --neuronpedia."""
    start = time.perf_counter()
    settings = GraphSettings.from_args(args, node_threshold=None if args.no_prune else args.node_threshold,
                                       n_decode=args.decode)
    computed = run_analysis(args, lambda svc, spec, progress: svc.graph(spec, args.prompt, settings, progress=progress))
    r, elapsed = computed.result, time.perf_counter() - start
    warn_not_cached(computed)
    if args.neuronpedia:
        emit_json(r.to_neuronpedia(), args.neuronpedia, stored_note(computed))
    if args.json:
        emit_json({**r.to_json(), "elapsed_s": elapsed, "cache_hit": computed.cache_hit}, args.json,
                   stored_note(computed))
        if args.json == "-":
            return 0
    s, out = r.summary(), sys.stdout
    out.write(f"model      {r.model}; {s['n_tokens']} tokens\n")
    out.write("targets    " + ", ".join(f"{t!r} (p={p:.3f})" for t, p in zip(r.target_tokens, r.target_probs,
                                                                            strict=True)) + "\n")
    out.write(f"graph      {s['nodes']} nodes, {s['edges']} edges, {s['visited']} visited; "
              f"{'pruned' if r.pruned else 'unpruned'} (node {r.node_threshold}, edge {r.edge_threshold}); "
              f"replacement score {r.replacement_score:.4f}\n")
    for top in r.top_paths():
        out.write(f"top path   into {top['target']!r}: {' -> '.join(top['labels'])} (share {top['share']:.3f})\n")
    out.write(f"{'cache hit' if computed.cache_hit else 'computed'} in {elapsed:.2f} s\n")
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    settings = SpectrumSettings(layer=args.layer, final_norm=not args.no_final_norm, k=args.top_k, n_decode=args.decode,
                                method=args.method, positions=args.positions)
    computed = run_analysis(args, lambda svc, spec, progress: svc.spectrum(spec, args.prompt, settings,
                                                                           progress=progress))

    def body(r: SpectrumResult, out: TextIO) -> None:
        out.write(f"output     x_{r.layer} (layer {r.layer} of 0..{r.n_layers})"
                  f"{' + final norm' if r.final_norm else ''}, last token; "
                  f"next token {r.next_token!r}\n")
        passes = f" ({r.passes} passes over the rows)" if r.passes else ""
        out.write(f"method     {r.method}{passes}, {r.n_products} operator products, max residual {r.max_residual:.1e}"
                  f"{'' if r.converged else ' (NOT converged)'}\n")
        for i, pos in enumerate(r.rows):
            se = f" ± {r.stable_rank_se[i]:.2f}" if r.method == "matrix_free" else ""
            out.write(f"[{pos}] {r.tokens[pos]!r}  stable rank {r.stable_rank[i]:.2f}{se}\n")
            for j in range(r.k):
                out.write(f"    s{j + 1} {r.singular_values[i, j]:9.3e}  U: {cell_text(r.u_tokens[i][j])}\n"
                          f"    {'':13} V: {cell_text(r.v_tokens[i][j])}\n")

    return report(args, computed, start, body)


def cmd_layers(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    settings = LayersSettings(k=args.top_k, n_decode=args.decode, lens=not args.no_lens, method=args.method,
                              sites=tuple(args.sites.split(",")) if args.sites else SITES)
    computed = run_analysis(args, lambda svc, spec, progress: svc.layers(spec, args.prompt, settings,
                                                                         progress=progress))

    def body(r: LayersResult, out: TextIO) -> None:
        out.write(f"tokens     {' | '.join(repr(t) for t in r.tokens)}\n")
        out.write(f"decoding   {'through the final norm (logit lens)' if r.lens else 'raw stream, W_U u'}; "
                  f"method {r.method}, max residual {r.max_residual:.1e}\n")
        for si, site in enumerate(r.sites):
            out.write(f"{site}: {SITE_LABELS[site]}; stable rank of the last token, s1, top tokens of u1 (last token)\n")
            for li in range(r.n_layers):
                where = f"block {li:>3}" if site in BLOCK_SITES else f"layer {li + 1:>3}"
                out.write(f"  {where}  stable rank {r.stable_rank[si, li, -1]:7.2f}  "
                          f"s1 {r.singular_values[si, li, -1, 0]:9.3e}  {cell_text(r.u_tokens[si][li][-1][0])}\n")

    return report(args, computed, start, body)


def register(sub: Any) -> None:
    """Add this group's commands to the subparsers ``sub``."""
    p = sub.add_parser("jacobian", help="detached vs ordinary Jacobian of the last token's output embedding")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    number_option(p, R.LAYER, None, "layer l: the output x_l, the residual stream after l blocks",
                  default_text="L: x_L, the last block's output")
    p.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm to the layer output")
    number_option(p, R.TOP_K, 5, "singular values per token to report")
    p.set_defaults(func=cmd_jacobian)

    p = sub.add_parser("graph", help="exact attribution graph of the next-token logits (no transcoders, no error nodes)")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    p.add_argument("--target", default=None, help="one target token, e.g. ' Golden' (default: the top 3 next tokens)")
    p.add_argument("--no-prune", action="store_true", help="keep every node and edge")
    number_option(p, R.NODE_THRESHOLD, GraphSettings.default("node_threshold"), "share of the neurons' influence the kept neurons cover")
    number_option(p, R.EDGE_THRESHOLD, GraphSettings.default("edge_threshold"), "share of the edges' influence the kept edges cover")
    number_option(p, R.MAX_NODES, GraphSettings.default("max_nodes"), "neurons visited as targets, most influential first")
    number_option(p, R.DECODE, GraphSettings.default("n_decode"), "decoded tokens per kept neuron's output and input")
    p.add_argument("--neuronpedia", metavar="FILE", default=None, help="also write the Neuronpedia graph JSON")
    p.set_defaults(func=cmd_graph)

    p = sub.add_parser("spectrum", help="top-k singular values of every token's J_i, decoded to tokens")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    number_option(p, R.LAYER, None, "layer l: the output x_l, the residual stream after l blocks",
                  default_text="L: x_L, the last block's output")
    p.add_argument("--no-final-norm", action="store_true", help="do not apply the final norm to the layer output")
    number_option(p, R.TOP_K, SpectrumSettings.default("k"), "singular triplets per token")
    number_option(p, R.DECODE, SpectrumSettings.default("n_decode"), "decoded tokens per singular vector")
    p.add_argument("--method", choices=list(SPECTRUM_METHODS), default=SpectrumSettings.default("method"),
                   help="full Jacobian, matrix-free top-k SVD (short prompts of wide models) or streamed row blocks "
                        "(long prompts: memory independent of T*d*d) (default: auto, by cost and memory)")
    p.add_argument("--positions", default=None, metavar="I,J,...",
                   help="only these input tokens' J_i: 0-based token indices of x_0, negative from the end "
                        "(default: every token)")
    p.set_defaults(func=cmd_spectrum)

    p = sub.add_parser("layers", help="every layer's cumulative, single-block, attention and MLP spectra")
    add_model_args(p)
    p.add_argument("--prompt", required=True, help="input text")
    number_option(p, R.TOP_K, LayersSettings.default("k"), "singular triplets per view and token")
    number_option(p, R.DECODE, LayersSettings.default("n_decode"), "decoded tokens per singular vector")
    p.add_argument("--no-lens", action="store_true",
                   help="analyse the raw stream (default: through the final norm, logit-lens style)")
    p.add_argument("--sites", default=None, help=f"comma-separated subset of {','.join(SITES)}")
    p.add_argument("--method", choices=list(SPECTRUM_METHODS), default=LayersSettings.default("method"),
                   help="full Jacobian, matrix-free top-k SVD or streamed row blocks (default: auto, by cost and memory)")
    p.set_defaults(func=cmd_layers)
