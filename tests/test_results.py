"""Results serialize to JSON + npz only, anything malformed is refused, and the base classes summarize them."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lldd_core.analysis.ablation import GainsAblation
from lldd_core.analysis.control import ControlResult
from lldd_core.analysis.gains import GainsResult
from lldd_core.analysis.layers import LayersResult
from lldd_core.store.results import PromptStamp, from_bytes, result_type, to_bytes, to_jsonable


@result_type
class Toy:
    name: str
    values: list
    score: float
    matrix: np.ndarray


def test_round_trip():
    toy = Toy(name="x", values=[1, 2], score=float("nan"), matrix=np.arange(6.0).reshape(2, 3))
    back = from_bytes(to_bytes(toy))
    assert back.name == "x" and back.values == [1, 2] and np.isnan(back.score)
    np.testing.assert_array_equal(back.matrix, toy.matrix)
    assert to_jsonable(toy)["matrix"] == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]


@pytest.mark.parametrize("blob", [b"", b"garbage", b"LLDD1\x05\x00\x00\x00{bad}", b"LLDD1\xff\xff\xff\xff"])
def test_malformed_is_value_error(blob):
    with pytest.raises(ValueError):
        from_bytes(blob)


def test_object_arrays_are_refused():
    with pytest.raises(TypeError):
        to_bytes(Toy(name="x", values=[], score=0.0, matrix=np.array([object()], dtype=object)))


# --- base classes ------------------------------------------------------------------------------------
MODEL = {"model": "org/m", "revision": "f" * 40, "dtype": "float32", "family": "gpt2"}
PROMPT = {"tokens": ["a", "b"], "input_ids": [1, 2]}
CONCEPT = {"n_params": 10, "dataset": "sentiment", "source": "builtin:sentiment", "classes": ["positive", "negative"],
           "n_layers": 2, "layers": [0, 1], "split_sizes": {"concept": 2, "operating": 1, "evaluation": 1}}
DIRECTIONS = {"prompts": ["p0", "p1"], "direction_norms": [1.0, 2.0, 3.0], "direction_noise": [0.1, 0.1, 0.1],
              "direction_strength": [0.5, 1.0, 0.9], "flagged_layers": [0]}


def grid(*shape: int) -> np.ndarray:
    return np.arange(float(np.prod(shape))).reshape(shape)


@result_type
class StampedToy(PromptStamp):
    SUMMARY_ARRAYS = ("curve",)

    score: float
    curve: np.ndarray  # [T]
    hidden: np.ndarray  # [T, T]


def test_stamped_round_trip_and_generic_summary():
    toy = StampedToy(**MODEL, **PROMPT, score=0.5, curve=grid(2), hidden=grid(2, 2))
    back = from_bytes(to_bytes(toy))
    assert type(back) is StampedToy and back.tokens == ["a", "b"] and back.input_ids == [1, 2]
    assert back.model == "org/m" and back.family == "gpt2" and back.score == 0.5
    np.testing.assert_array_equal(back.hidden, toy.hidden)
    # non-array fields as they are (the ids left out), then the named arrays as lists
    assert back.summary() == {**MODEL, "tokens": ["a", "b"], "score": 0.5, "curve": [0.0, 1.0]}


def test_entries_are_restored_by_field_name():
    blob = to_bytes(StampedToy(**MODEL, **PROMPT, score=0.5, curve=grid(2), hidden=grid(2, 2)))
    n = int.from_bytes(blob[5:9], "little")
    header = json.loads(blob[9:9 + n])
    header["meta"] = dict(reversed(list(header["meta"].items())))  # another field order, as older code wrote
    moved = json.dumps(header).encode()
    back = from_bytes(blob[:5] + len(moved).to_bytes(4, "little") + moved + blob[9 + n:])
    assert back.summary() == from_bytes(blob).summary()


def tiny_gains() -> GainsResult:
    return GainsResult(**MODEL, **CONCEPT, **DIRECTIONS, order=4, complement="krylov", eps=0.1, mode="prompt",
                       mean_spearman=0.5, mean_pearson=0.6, spearman_of_means=0.7, pearson_of_means=0.8,
                       best_layer_predicted=1, best_layer_measured=0, best_layer_exact=1, elapsed_s=1.5,
                       predicted=grid(2, 2), measured=grid(2, 2) + 1, exact=grid(2, 2) + 2, spearman=grid(2),
                       pearson=grid(2) / 2, directions=grid(3, 4),
                       agreement_all_layers={"mean_spearman": 0.1, "mean_pearson": 0.2, "spearman_of_means": 0.3,
                                             "pearson_of_means": 0.4})


def test_gains_summary_has_the_hand_listed_keys():
    r = tiny_gains()
    keys = ("model", "revision", "dtype", "family", "n_params", "dataset", "source", "classes", "order",
            "complement", "eps", "mode", "n_layers", "layers", "split_sizes", "mean_spearman", "mean_pearson",
            "spearman_of_means", "pearson_of_means", "best_layer_predicted", "best_layer_measured",
            "best_layer_exact", "direction_norms", "direction_noise", "direction_strength", "flagged_layers",
            "agreement_all_layers", "elapsed_s")
    prompts = [{"text": t, "predicted": r.predicted[i].tolist(), "measured": r.measured[i].tolist(),
                "exact": r.exact[i].tolist(), "spearman": float(r.spearman[i]), "pearson": float(r.pearson[i])}
               for i, t in enumerate(r.prompts)]
    assert r.summary() == {**{k: getattr(r, k) for k in keys}, "prompts": prompts}
    assert from_bytes(to_bytes(r)).summary() == r.summary()


def test_ablation_summary_has_the_hand_listed_keys():
    r = GainsAblation(**MODEL, **CONCEPT, **DIRECTIONS, vary="eps", values=[0.1, 0.2], order=4, eps=0.1,
                      complement="krylov", mode="prompt", elapsed_s=2.0, mean_spearman=grid(2),
                      mean_pearson=grid(2) + 1, spearman_of_means=grid(2) + 2, pearson_of_means=grid(2) + 3,
                      spearman=grid(2, 2), pearson=grid(2, 2), predicted=grid(2, 2, 2), measured=grid(2, 2, 2),
                      exact=grid(2, 2))
    keys = ("model", "revision", "dtype", "family", "n_params", "dataset", "source", "classes", "vary", "order",
            "eps", "complement", "mode", "n_layers", "layers", "split_sizes", "direction_norms", "direction_noise",
            "direction_strength", "flagged_layers", "elapsed_s")
    rows = [{"value": v, "mean_spearman": float(r.mean_spearman[i]), "mean_pearson": float(r.mean_pearson[i]),
             "spearman_of_means": float(r.spearman_of_means[i]), "pearson_of_means": float(r.pearson_of_means[i])}
            for i, v in enumerate(r.values)]
    assert r.summary() == {**{k: getattr(r, k) for k in keys}, "values": rows}


def test_control_summary_has_the_hand_listed_keys():
    r = ControlResult(**MODEL, **CONCEPT, order=4, complement="krylov", targets=[0.5, 1.0],
                      names=["min_energy", "single"], tol=0.01, n_prompts=2, elapsed_s=3.0, gains=grid(2),
                      surrogate_u=grid(2, 2, 2), u=grid(2, 2, 2) + 1, amplitude=grid(2, 2), energy=grid(2, 2) + 1,
                      surrogate_energy=grid(2, 2) + 2, achieved=grid(2, 2) + 3,
                      reached=np.array([[True, False], [False, True]]))
    keys = ("model", "revision", "dtype", "family", "n_params", "dataset", "source", "classes", "order",
            "complement", "n_layers", "layers", "split_sizes", "targets", "tol", "n_prompts", "elapsed_s")
    schedules = {name: [{"target": float(t), "u": r.u[s, i].tolist(), "energy": float(r.energy[s, i]),
                         "achieved": float(r.achieved[s, i]), "reached": bool(r.reached[s, i]),
                         "amplitude": float(r.amplitude[s, i]), "surrogate_energy": float(r.surrogate_energy[s, i])}
                        for i, t in enumerate(r.targets)]
                 for s, name in enumerate(r.names)}
    assert r.summary() == {**{k: getattr(r, k) for k in keys}, "gains": r.gains.tolist(), "schedules": schedules}


def test_layers_summary_has_the_hand_listed_keys():
    S, L, T = 1, 2, 2
    r = LayersResult(**MODEL, **PROMPT, n_layers=L, sites=["cumulative"], lens=True, k=2, n_decode=1, method="full",
                     converged=True, max_residual=0.0, n_products=3, elapsed_s=0.5,
                     u_tokens=[[[[[f"u{t}{li}"]] for t in range(T)] for li in range(L)]],
                     u_tokens_neg=[[[[["-u"]]] * T] * L], v_tokens=[[[[[f"v{t}{li}"]] for t in range(T)] for li in range(L)]],
                     singular_values=grid(S, L, T, 2), stable_rank=grid(S, L, T), stable_rank_se=np.zeros((S, L, T)),
                     projection=grid(S, L, T) / 4)
    layers = [{"layer": li + 1, "of_block": li, "cumulative": {
        "stable_rank": r.stable_rank[0, li].tolist(), "singular_values": r.singular_values[0, li].tolist(),
        "top_u_tokens": [cell[0] for cell in r.u_tokens[0][li]], "top_v_tokens": [cell[0] for cell in r.v_tokens[0][li]],
        "projection_on_final": r.projection[0, li].tolist()}} for li in range(L)]
    keys = ("model", "revision", "dtype", "family", "n_layers", "sites", "lens", "k", "n_decode", "method",
            "converged", "max_residual", "n_products", "elapsed_s")
    assert r.summary() == {**{k: getattr(r, k) for k in keys}, "tokens": r.tokens, "layers": layers}
    json.dumps(r.summary())  # the CLI writes it as JSON


def test_steering_result_summary_is_the_hand_listed_one() -> None:
    """SteeringResult's generic summary: today's keys in today's order, its arrays as lists."""
    from lldd_core.steering.compare import SteeringResult

    r = SteeringResult(model="m", revision="r", dtype="float32", family="gpt2", prompt="p", method="additive",
                       params={"layers": [2]}, settings={"max_new_tokens": 4}, dataset="d", unsteered="u",
                       steered="s", unsteered_tokens=["a"], steered_tokens=["b"], elapsed_s=1.0,
                       readout_unsteered=np.zeros(2), readout_steered=np.ones(2), schedule=np.arange(3.0),
                       classes=["positive", "negative"], class_readouts=[2.0, -1.0], steered_loop="",
                       unsteered_loop="a b c", split_sizes={"concept": 6, "operating": 4, "evaluation": 3})
    keys = ("model", "revision", "dtype", "family", "prompt", "method", "params", "settings", "dataset",
            "unsteered", "steered", "unsteered_tokens", "steered_tokens", "elapsed_s", "classes", "class_readouts",
            "steered_loop", "unsteered_loop", "split_sizes")
    # boundary (2 - 1) / 2 = 0.5: readout 0 reads negative, 1 positive
    expected = {**{k: getattr(r, k) for k in keys}, "readout_unsteered": [0.0, 0.0], "readout_steered": [1.0, 1.0],
                "schedule": [0.0, 1.0, 2.0], "boundary": 0.5, "loops": False,
                "verdict": {"unsteered": "negative", "steered": "positive"}}
    assert list(r.summary().items()) == list(expected.items())
    assert from_bytes(to_bytes(r)).summary() == expected
