"""Steering methods as registered objects: a method defined and registered here (one class, one params
dataclass) appears in the registry, the CLI and the service like the built-in ones; the built-ins' settings
defaults are the command line's."""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lldd_core import ranges as R
from lldd_core.cli.main import build_parser, main
from lldd_core.cli.steer import method_params
from lldd_core.errors import InputError
from lldd_core.forward.hooks import Hook, replace_input
from lldd_core.forward.interventions import Intervention, Positions
from lldd_core.models.loading import ModelHandle, ModelSpec
from lldd_core.steering.compare import SteeringPlan
from lldd_core.steering.generate import GenerationSettings
from lldd_core.steering.methods.base import SteeringContext, SteeringMethod, option, options
from lldd_core.steering.methods.registry import get, names, register, unregister

PROMPT = "The movie was"
BUILT_IN = ("additive", "llv", "jacobian", "lqr")
SCALE = R.Range("scale", "the toy scale α", float, -1, 10)
SCALE_LAYER = R.Range("scale_layer", "the toy layer", int, 0, hi_name="the number of layers", hi_open=True)


@dataclasses.dataclass(frozen=True)
class ScaleParams:
    scale: float = option(0.0, "α: the last token's state times 1 + α", range=SCALE)
    scale_layer: int = option(1, "the block input it scales", range=SCALE_LAYER)


@dataclasses.dataclass
class ScaleLast(Intervention):
    """``x_l <- factor · x_l`` at block ``layer``'s input, last position of every forward."""

    layer: int
    factor: float

    def hooks(self, blocks: nn.ModuleList, positions: Positions) -> list[Hook]:
        def scaled(h: torch.Tensor) -> torch.Tensor:
            h = h.clone()
            h[:, -1] = h[:, -1] * self.factor
            return h

        return [replace_input(blocks[self.layer], scaled)]


class Scale(SteeringMethod):
    name = "scale"
    label = "scale"
    help = "Scales the last token's state at one layer by 1 + α (a test method)."
    Params = ScaleParams
    needs_dataset = False

    def check(self, params: ScaleParams, n_layers: int, d: int) -> ScaleParams:
        return ScaleParams(SCALE.check(params.scale), SCALE_LAYER.check(params.scale_layer, hi=n_layers))

    def plan(self, handle: ModelHandle, params: ScaleParams, context: SteeringContext) -> SteeringPlan:
        return SteeringPlan(self.name, [ScaleLast(params.scale_layer, 1.0 + params.scale)],
                            context.readout(handle.n_layers), params=dataclasses.asdict(params))


@pytest.fixture()
def scale_method() -> Iterator[Scale]:
    """The toy method registered for one test; the registry as it was afterwards."""
    before = names()
    method = register(Scale())
    try:
        yield method
    finally:
        unregister(method.name)
    assert names() == before


def steer_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["steer"]


def action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action:
    return next(a for a in parser._actions if flag in a.option_strings)


def test_a_registered_method_is_in_the_registry_and_the_cli(scale_method):
    assert names() == (*BUILT_IN, "scale") and get("scale") is scale_method
    parser = steer_parser()
    assert action(parser, "--method").choices == [*BUILT_IN, "scale"]
    assert action(parser, "--scale").default == 0.0 and action(parser, "--scale-layer").default == 1
    help_text = " ".join(parser.format_help().split())
    assert "scale: α: the last token's state times 1 + α: a number in [-1, 10] (default 0)" in help_text
    assert "except for jacobian, scale" in help_text  # neither needs a concept dataset
    args = parser.parse_args(["--prompt", PROMPT, "--method", "scale", "--scale", "0.5", "--scale-layer", "0"])
    assert method_params("scale", args) == ScaleParams(scale=0.5, scale_layer=0)
    with pytest.raises(ValueError, match="registered already"):
        register(Scale())


def test_a_registered_method_runs_through_the_service(scale_method, tiny_dirs, tmp_path):
    from lldd_core.service import Service
    from lldd_core.store.cache import ResultCache

    svc = Service(ResultCache(tmp_path / "cache"))
    spec = ModelSpec(str(tiny_dirs["llama"]), dtype="float64", device="cpu")
    settings = GenerationSettings(max_new_tokens=6)
    zero = svc.steer(spec, PROMPT, "scale", ScaleParams(scale=0.0), settings=settings)
    assert not zero.cache_hit and zero.result.method == "scale"
    assert zero.result.steered_tokens == zero.result.unsteered_tokens  # 1 + 0 = 1: the identity
    assert zero.result.readout_steered.size == 0  # no dataset, no readout
    assert svc.steer(spec, PROMPT, "scale", {"scale": 0.0}, settings=settings).cache_hit  # a dict is the same key
    strong = svc.steer(spec, PROMPT, "scale", ScaleParams(scale=-1.0, scale_layer=1), settings=settings)
    assert strong.result.steered_tokens != strong.result.unsteered_tokens
    assert strong.result.unsteered == zero.result.unsteered
    with pytest.raises(InputError, match="toy layer"):
        svc.steer(spec, PROMPT, "scale", ScaleParams(scale_layer=2), settings=settings)
    with pytest.raises(InputError, match="has no setting 'alpha'"):
        svc.steer(spec, PROMPT, "scale", {"alpha": 1.0}, settings=settings)
    svc.cache.close()


def test_a_registered_method_runs_from_the_command_line(scale_method, tiny_dirs, fresh_service, capsys):
    code = main(["steer", "--model", str(tiny_dirs["llama"]), "--dtype", "float64", "--device", "cpu", "--prompt",
                 PROMPT, "--method", "scale", "--scale", "0", "--max-new-tokens", "4", "--json", "-", "--quiet"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["method"] == "scale" and payload["params"] == {"scale": 0.0, "scale_layer": 1}
    assert payload["steered"] == payload["unsteered"]


def test_a_registered_method_gets_controls_on_the_page(scale_method, tiny_dirs, fresh_service, monkeypatch):
    """The page offers the toy method with a widget per setting (built from its Params) and steers with it."""
    from tests.apptest import assert_clean, open_page

    at = open_page("pages/steering.py", tiny_dirs["gpt2"], monkeypatch)
    assert "scale" in at.multiselect(key="st_methods").options
    at.multiselect(key="st_methods").set_value(["scale"]).run()
    assert at.number_input(key="st_scale_scale").value == 0.0
    assert at.number_input(key="st_scale_scale_layer").value == 1
    at.number_input(key="st_max_new_of_63").set_value(4)
    at.checkbox(key="st_use_dataset").uncheck()
    at.button(key="st_generate").click().run()
    assert_clean(at)
    assert [s.label.split(" — ")[0] for s in at.status] == ["Scale steering ready"]
    texts = [m.value for m in at.markdown if m.value.startswith('<div class="lldd-text"')]
    assert len(texts) == 2 and texts[0] == texts[1]  # α = 0: the steered text is the unsteered one


def test_an_unknown_method_is_one_input_error_line(tiny_dirs, tmp_path):
    from lldd_core.service import Service
    from lldd_core.store.cache import ResultCache

    with pytest.raises(InputError) as refused:
        get("magic")
    message = str(refused.value)
    assert "\n" not in message and message == "Unknown method 'magic': choose one of additive, llv, jacobian, lqr."
    svc = Service(ResultCache(tmp_path / "cache"))
    with pytest.raises(InputError, match="Unknown method 'magic'"):
        svc.steer(ModelSpec(str(tiny_dirs["gpt2"]), device="cpu"), PROMPT, "magic")
    svc.cache.close()


@pytest.mark.parametrize("name", BUILT_IN)
def test_each_built_in_default_is_the_command_line_default(name):
    method = get(name)
    parser = steer_parser()
    settable = options(method.Params)
    assert [f.name for f, _ in settable] == [f.name for f in dataclasses.fields(method.Params)]  # all on the CLI
    for field, opt in settable:
        assert action(parser, opt.flag(field.name)).default == field.default, field.name
    args = parser.parse_args(["--prompt", PROMPT, "--method", name])
    assert method_params(name, args) == method.Params()


def test_methods_sharing_a_flag_must_declare_it_alike():
    @dataclasses.dataclass(frozen=True)
    class OddParams:
        lam: float | None = option(0.5, "a λ with another default", range=R.LAM)

    class Odd(Scale):
        name = "odd"
        Params = OddParams

    register(Odd())
    try:
        with pytest.raises(ValueError, match="declare --lam differently"):
            build_parser()
    finally:
        unregister("odd")
    assert "odd" not in names()


def test_a_setting_named_like_a_key_entry_is_refused():
    @dataclasses.dataclass(frozen=True)
    class ClashParams:
        seed: int = option(0, "a second seed", range=R.SEED)

    class Clash(Scale):
        name = "clash"
        Params = ClashParams

    with pytest.raises(ValueError, match="clash in the cache key"):
        register(Clash())
    assert "clash" not in names()

