"""The hooks toolkit (lldd_core.forward.hooks): always removed; capture, replace and stop on a tiny module."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lldd_core.forward.hooks import (
    Hook,
    StopForward,
    capture,
    hooks,
    on_input,
    replace_input,
    replace_output,
    run_until,
    stop_after,
)


class Block(nn.Module):
    """A block the way the families call theirs: hidden state positional or as ``hidden_states``,
    output a tuple ``(hidden_states, extra)``."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, hidden_states: torch.Tensor, scale: float = 1.0) -> tuple[torch.Tensor, str]:
        return hidden_states + scale * self.lin(hidden_states), "extra"


class Stack(nn.Module):
    def __init__(self, d: int = 4, n: int = 3, keyword: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))
        self.keyword = keyword
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            self.calls.append(i)
            x = block(hidden_states=x)[0] if self.keyword else block(x)[0]
        return x


def _count(model: nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


@pytest.fixture
def stack() -> Stack:
    torch.manual_seed(0)
    return Stack()


def test_hooks_are_removed_after_success(stack):
    x = torch.randn(2, 4)
    out: dict = {}
    with hooks(capture(stack.blocks[0], out, "a"), capture(stack.blocks[1], out, "b", at="input")):
        assert _count(stack) == 2
        stack(x)
    assert _count(stack) == 0
    torch.testing.assert_close(out["a"], out["b"])  # block 0's output is block 1's input


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_hooks_are_removed_after_an_exception_in_the_block(stack, error):
    with pytest.raises(error), hooks(on_input(stack.blocks[0], lambda h: None), stop_after(stack.blocks[1])):
        raise error("inside")
    assert _count(stack) == 0


def test_hooks_are_removed_after_a_hook_raises_in_the_forward(stack):
    def bad(h: torch.Tensor) -> None:
        raise ValueError("hook failed")

    with pytest.raises(ValueError, match="hook failed"), hooks(capture(stack.blocks[0], {}, "a"),
                                                             on_input(stack.blocks[2], bad)):
        stack(torch.randn(1, 4))
    assert _count(stack) == 0


def test_earlier_hooks_are_removed_when_a_later_registration_fails(stack):
    class Refuses(nn.Module):
        def register_forward_hook(self, *args, **kwargs):
            raise RuntimeError("cannot register")

    with pytest.raises(RuntimeError, match="cannot register"), hooks(
        capture(stack.blocks[0], {}, "a"), on_input(stack.blocks[1], lambda h: None), capture(Refuses(), {}, "x")
    ):
        pytest.fail("the block must not run")
    assert _count(stack) == 0


def test_unknown_kinds_are_refused(stack):
    with pytest.raises(ValueError, match="kind"):
        Hook(stack.blocks[0], "around", lambda *a: None)
    with pytest.raises(ValueError, match="capture at"):
        capture(stack.blocks[0], {}, "a", at="middle")


@pytest.mark.parametrize("keyword", [False, True])
def test_replace_input_substitutes_positional_or_keyword_hidden_states(keyword):
    torch.manual_seed(0)
    model = Stack(keyword=keyword)
    x, z = torch.randn(2, 4), torch.randn(2, 4)
    expect = model.blocks[2](model.blocks[1](z)[0])[0]
    out: dict = {}
    # registration order: the capture on the same block sees the replaced input
    with hooks(replace_input(model.blocks[1], lambda h: z), capture(model.blocks[1], out, "in", at="input")):
        y = model(x)
    torch.testing.assert_close(y, expect)
    assert out["in"] is z


def test_replace_input_returning_the_input_or_none_leaves_the_call_alone(stack):
    x = torch.randn(2, 4)
    plain = stack(x)
    seen: dict = {}
    with hooks(replace_input(stack.blocks[0], lambda h: h), replace_input(stack.blocks[1], lambda h: None),
               capture(stack.blocks[1], seen, "in", at="input")):
        torch.testing.assert_close(stack(x), plain)
    assert seen["in"] is not None


def test_replace_output_keeps_the_other_tuple_entries(stack):
    x = torch.randn(2, 4)
    got: dict = {}

    def record(module, args, output):
        got["output"] = output

    with hooks(replace_output(stack.blocks[0], lambda h: torch.zeros_like(h)), Hook(stack.blocks[0], "post", record)):
        y = stack(x)
    assert got["output"][1] == "extra"
    assert torch.count_nonzero(got["output"][0]) == 0
    expect = stack.blocks[2](stack.blocks[1](torch.zeros_like(x))[0])[0]
    torch.testing.assert_close(y, expect)


def test_capture_select_and_autograd(stack):
    x = torch.randn(2, 4, requires_grad=True)
    out: dict = {}
    with hooks(capture(stack.blocks[1], out, "h"), capture(stack.blocks[1], out, "last", select=lambda h: h[-1].detach())):
        stack(x)
    assert out["h"].requires_grad and out["h"].grad_fn is not None  # kept inside the graph
    assert not out["last"].requires_grad
    torch.testing.assert_close(out["last"], out["h"][-1].detach())


def test_stop_after_skips_the_rest_and_run_until_returns_none(stack):
    x = torch.randn(2, 4)
    out: dict = {}
    with hooks(stop_after(stack.blocks[1], out, "h")):
        assert run_until(stack, x) is None
    assert stack.calls == [0, 1]  # block 2 never ran
    torch.testing.assert_close(out["h"], stack.blocks[1](stack.blocks[0](x)[0])[0])
    with pytest.raises(StopForward), hooks(stop_after(stack.blocks[0])):
        stack(x)  # outside run_until the stop propagates
    assert _count(stack) == 0
    torch.testing.assert_close(run_until(stack, x), stack(x))  # no stop: the forward's own result


def test_hooks_run_in_registration_order(stack):
    order: list[str] = []
    with hooks(on_input(stack.blocks[0], lambda h: order.append("first")),
               on_input(stack.blocks[0], lambda h: order.append("second")),
               capture(stack.blocks[0], {}, "y"),
               Hook(stack.blocks[0], "post", lambda m, a, o: order.append("post"))):
        stack(torch.randn(1, 4))
    assert order == ["first", "second", "post"]
