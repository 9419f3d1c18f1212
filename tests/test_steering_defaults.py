"""Steering at its defaults makes the point on the default demo model (issue 16).

For negative in-domain reviews that are neither the page's examples nor in the concept split, every concept
method at its default settings turns the verdict positive: the steered text's mean readout (as the unsteered
model reads it) goes up and crosses the class-mean boundary, the text changed, and it does not loop.

The prompts are prefixes of demo-corpus training reviews ("... and I" / "... . I" before the verb), so the
model writes the words that carry the sentiment: taken in a fixed order (by the corpus's fill hash), the
first four are the page's examples, the next six are these.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from lldd_core.analysis.gains import prepare_gains
from lldd_core.concepts.catalog import load
from lldd_core.concepts.splits import split
from lldd_core.models.loading import ModelSpec, load_model
from lldd_core.steering.compare import compare
from lldd_core.steering.examples import examples
from lldd_core.steering.methods.base import SteeringContext
from lldd_core.steering.methods.registry import plan_steering
from lldd_core.steering.pieces import analyze_mean_jacobians
from lldd_core.steering.service_steps import readout_scale

PROMPTS = (
    "The service at the sushi bar was lousy and I",
    "Review: shoddy umbrella. I",
    "The service at the bakery was terrible and I",
    "This bicycle is miserable, and I",
    "This diner is lousy, and I",
    "The service at the bistro was terrible and I",
)
METHODS = ("additive", "llv", "lqr")
# ~8 min on 2 cores (the mean Jacobians at 400/200/200 and 18 generations): opt-in until it is cut down
pytestmark = pytest.mark.skipif(not os.environ.get("LLDD_SLOW_TESTS"), reason="slow; set LLDD_SLOW_TESTS=1")
#: Known shortfall (issue 16, open): LLV's least-energy schedule and LQR's feedback put much of their push at
#: late layers (x_3 of 4), which writes verdict tokens directly ("returned it. Worth every penny.", "orth every
#: penny.") instead of changing the review's verb; the additive default at the largest-gain layer x_1 flips all.
LATE_LAYER_SHORTFALL = pytest.mark.xfail(strict=True, reason="LLV / LQR defaults still miss 1-3 of the 6 prompts")


@pytest.fixture(scope="module")
def steered(demo_default):
    """Every method's default plan (as ``Service.steer`` makes it: the same concept setup and pieces), made once
    and run on every prompt."""
    handle = load_model(ModelSpec(str(demo_default), dtype="float32", device="cpu"))
    setup = prepare_gains(handle, load("sentiment"), n_eval=1, sizes=(400, 200, 200), seed=0)
    A = torch.as_tensor(analyze_mean_jacobians(handle, setup).A)
    context = SteeringContext(setup=setup, mean_jacobians=A)
    scale = readout_scale(setup)
    out = {}
    for method in METHODS:
        plan = plan_steering(handle, method, None, context)
        for prompt in PROMPTS:
            out[method, prompt] = compare(handle, prompt, plan, dataset="sentiment", scale=scale)
    return out


def test_the_prompts_are_held_out_of_the_page_and_the_concept_split():
    data = load("sentiment")
    concept = split(data, n_concept=400, n_operating=200, n_eval=200, seed=0).concept.texts
    assert not set(PROMPTS) & set(examples("sentiment"))
    assert not [t for t in concept for p in PROMPTS if t.startswith(p)]  # not even a concept text's beginning
    assert not [t for t in data.texts for p in PROMPTS if t.startswith(p)]


@pytest.mark.parametrize("method", [pytest.param(m, marks=() if m == "additive" else LATE_LAYER_SHORTFALL)
                                    for m in METHODS])
def test_defaults_turn_negative_reviews_positive_without_loops(steered, method):
    for prompt in PROMPTS:
        r = steered[method, prompt]
        assert r.verdict(r.readout_unsteered) == "negative", (prompt, r.unsteered)  # the prompt is negative
        assert r.steered != r.unsteered, prompt
        assert not r.steered_loop, (prompt, r.steered)
        assert np.mean(r.readout_steered) > np.mean(r.readout_unsteered), (prompt, r.steered)
        assert r.verdict(r.readout_steered) == "positive", (prompt, r.steered, np.mean(r.readout_steered), r.boundary)
        assert r.summary_extra()["verdict"] == {"unsteered": "negative", "steered": "positive"}
        assert r.params.get("calibrated", method == "lqr"), r.params  # additive and llv ran calibrated
