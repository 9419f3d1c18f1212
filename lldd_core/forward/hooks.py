"""The one hooks toolkit: forward (pre-)hooks that read, replace or stop, always removed again.

Every place in the core that looks into or edits a forward pass describes its hooks as
:class:`Hook` values — a module, a kind (``"pre"``: before the module's forward, sees its inputs;
``"post"``: after it, sees its output) and a function — and installs them with :func:`hooks`, a
context manager that registers them **in the order given** and removes every one on exit: after
success, after an exception or ``KeyboardInterrupt`` inside the block, and after a registration that
fails part-way. Order is meaningful: hooks of one kind on one module run in registration order,
each seeing what the previous one substituted.

The builders below cover what the core needs. A block's "input" is its hidden state: the first
positional argument, or the ``hidden_states`` keyword (the families call their blocks either way,
so every input hook is registered ``with_kwargs``). An "output" is the module's result, or its first
element when it returns a tuple (blocks return ``(hidden_states, ...)`` in some families).

* :func:`on_input` reads an input; :func:`replace_input` / :func:`replace_output` substitute one;
* :func:`capture` stores an input or output into a dict under a key;
* :func:`stop_after` stores a module's output and raises :class:`StopForward`, which
  :func:`run_until` catches, so nothing after that module is computed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

HookKind = Literal["pre", "post"]
Transform = Callable[[torch.Tensor], torch.Tensor | None]
T = TypeVar("T")


class StopForward(Exception):
    """Raised by a :func:`stop_after` hook: nothing after that module needs computing."""


@dataclass(frozen=True)
class Hook:
    """One hook to register: ``fn`` on ``module`` before (``"pre"``) or after (``"post"``) its forward.

    ``fn`` has PyTorch's signature for the kind: ``(module, args)`` / ``(module, args, output)``,
    with ``kwargs`` after ``args`` when ``with_kwargs``. Its return value substitutes the inputs
    (pre: ``args`` or ``(args, kwargs)``) or the output (post); ``None`` leaves them as they are.
    """

    module: nn.Module
    kind: HookKind
    fn: Callable[..., Any]
    with_kwargs: bool = False

    def __post_init__(self) -> None:
        if self.kind not in ("pre", "post"):
            raise ValueError(f"hook kind must be 'pre' or 'post', got {self.kind!r}")

    def register(self) -> RemovableHandle:
        """Install the hook on its module; the handle removes it."""
        if self.kind == "pre":
            return self.module.register_forward_pre_hook(self.fn, with_kwargs=self.with_kwargs)
        return self.module.register_forward_hook(self.fn, with_kwargs=self.with_kwargs)


@contextlib.contextmanager
def hooks(*registrations: Hook) -> Iterator[None]:
    """Register ``registrations`` in order for the duration of the block; always remove all of them.

    Removal also happens when a later registration raises (the earlier ones are undone) and when
    the block ends by any exception, ``KeyboardInterrupt`` included.
    """
    handles: list[RemovableHandle] = []
    try:
        for hook in registrations:
            handles.append(hook.register())
        yield
    finally:
        for handle in handles:
            handle.remove()


def first(output: Any) -> torch.Tensor:
    """The hidden state of a module's output: ``output[0]`` of a tuple, else ``output`` itself."""
    return output[0] if isinstance(output, tuple) else output


def with_first(output: Any, new: torch.Tensor) -> Any:
    """``output`` with its hidden state (see :func:`first`) replaced by ``new``."""
    return (new, *output[1:]) if isinstance(output, tuple) else new


def hidden_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """A block's hidden-state input: the first positional argument, else ``kwargs["hidden_states"]``."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden_input(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with the hidden-state input (see :func:`hidden_input`) replaced by ``new``."""
    if args:
        return (new, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": new}


def replace_input(module: nn.Module, fn: Transform) -> Hook:
    """Pre-hook: ``module`` runs on ``fn(x)`` instead of its input ``x``.

    ``fn`` returning ``x`` itself or ``None`` leaves the call untouched.
    """

    def pre(_module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        current = hidden_input(args, kwargs)
        new = fn(current)
        if new is None or new is current:
            return None
        return with_hidden_input(args, kwargs, new)

    return Hook(module, "pre", pre, with_kwargs=True)


def on_input(module: nn.Module, fn: Callable[[torch.Tensor], None]) -> Hook:
    """Pre-hook: call ``fn(x)`` with ``module``'s input ``x`` (read only)."""

    def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
        fn(hidden_input(args, kwargs))

    return Hook(module, "pre", pre, with_kwargs=True)


def replace_output(module: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]) -> Hook:
    """Post-hook: ``module``'s hidden-state output ``y`` becomes ``fn(y)`` (other tuple entries kept)."""

    def post(_module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        return with_first(output, fn(first(output)))

    return Hook(module, "post", post, with_kwargs=True)


def capture(
    module: nn.Module,
    into: MutableMapping[Hashable, Any],
    key: Hashable,
    *,
    at: Literal["input", "output"] = "output",
    select: Callable[[torch.Tensor], Any] | None = None,
) -> Hook:
    """Store ``module``'s hidden-state input or output (``at``) as ``into[key]`` on every call.

    ``select`` maps the tensor before it is stored (e.g. one position, detached); by default the
    tensor itself is kept, inside the autograd graph.
    """
    keep = select if select is not None else (lambda h: h)
    if at == "input":

        def pre(_module: nn.Module, args: tuple, kwargs: dict) -> None:
            into[key] = keep(hidden_input(args, kwargs))

        return Hook(module, "pre", pre, with_kwargs=True)
    if at != "output":
        raise ValueError(f"capture at must be 'input' or 'output', got {at!r}")

    def post(_module: nn.Module, args: tuple, output: Any) -> None:
        into[key] = keep(first(output))

    return Hook(module, "post", post)


def stop_after(module: nn.Module, into: MutableMapping[Hashable, Any] | None = None, key: Hashable = None) -> Hook:
    """Post-hook: store ``module``'s hidden-state output as ``into[key]`` (when given), then raise
    :class:`StopForward` so the rest of the forward is skipped (run it with :func:`run_until`)."""

    def post(_module: nn.Module, args: tuple, output: Any) -> None:
        if into is not None:
            into[key] = first(output)
        raise StopForward

    return Hook(module, "post", post)


def run_until(forward: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """``forward(*args, **kwargs)``; ``None`` when a :func:`stop_after` hook ended it early."""
    try:
        return forward(*args, **kwargs)
    except StopForward:
        return None
