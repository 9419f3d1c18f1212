"""Permalinks: a view's inputs live in the URL's query string, so a link reopens the same view.

UI only. A view (and the sidebar) names its linkable widget keys with :func:`fields`; app.py calls
:func:`begin` before the sidebar and :func:`finish` after the view. A parameter's name is its widget key
without the ``_of_<n>`` suffix that keys a widget by the model's size (``dj_layer_of_12`` is ``dj_layer``),
so one link fits any model. Values are typed like the widget's own value (``str``, ``bool`` as ``1``/``0``,
``int``, ``float``, lists as repeated parameters); nothing else is linked.

Opening a link (the first run of a browser session whose URL has a query string) takes a few quick runs:

1. *probe*: the view draws itself with its defaults, so every linked key and the type of its value is known;
2. *seed*: the link's values, decoded to those types, go into session state before the widgets are drawn
   (repeated while new keys appear, e.g. ``dj_layer_of_<n>`` once the link's model is chosen);
3. *replay*: the view runs its main action through :func:`replaying` in cache-only mode
   (:func:`lldd_core.service.cache_only`): a stored result is shown at once, a missing one leaves the filled
   form for the user to compute. A link never starts a long computation.

A hostile or stale query string never breaks the view: a value that does not decode, that the widget refuses
(Streamlit falls back to the default silently; the value it shows is compared with the link's) or that makes
the view raise, and an unknown name, each fall back to the default, named in one notice line. After that the
URL follows the widgets: every run writes the current values back (the browser's address is the link), and
the sidebar shows it in full with a copy button.
"""

from __future__ import annotations

import contextlib
import math
import re
import urllib.parse
from collections.abc import Iterator
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

#: Session-state keys (all under ``link.``): the phase, what is left of the opened link, the values seeded
#: (by key), the rounds so far, and the notice lines.
PHASE, PENDING, SEEDED, ROUNDS, NOTICES = "link.phase", "link.pending", "link.seeded", "link.rounds", "link.notices"
#: The keys the current run named with :func:`fields` (reset by :func:`begin`).
FIELDS = "link.fields"
#: Phases of a session: opening a link (probe, seed, replay), then live.
PROBE, SEED, REPLAY, LIVE = "probe", "seed", "replay", "live"
#: Seed and replay rounds before a link counts as opened (each new key revealed costs one).
MAX_ROUNDS = 6
#: The longest text value a link may carry (a prompt); longer is refused.
MAX_TEXT = 4000
#: Booleans in a URL.
TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_SIZED = re.compile(r"_of_\d+$")


def param_name(key: str) -> str:
    """The URL name of a widget key: without the ``_of_<n>`` suffix that keys a widget by the model's size."""
    return _SIZED.sub("", key)


def encode(value: Any) -> str | list[str] | None:
    """A widget value as query-string text (lists: one entry each), or ``None`` when it is not linkable."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | str):
        return str(value)
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else None
    if isinstance(value, list | tuple) and all(isinstance(v, str | int) and not isinstance(v, bool) for v in value):
        return [str(v) for v in value]
    return None


def decode(raw: list[str], like: Any) -> Any:
    """``raw`` (a parameter's values) as a value of ``like``'s type; :class:`ValueError` says why not."""
    if isinstance(like, list | tuple):
        kinds = {type(v) for v in like}
        return [int(v) if kinds == {int} else _text(v) for v in raw]
    if len(raw) != 1:
        raise ValueError("given more than once")
    text = raw[0]
    if isinstance(like, bool):
        if text.lower() in TRUE + FALSE:
            return text.lower() in TRUE
        raise ValueError("not 1 or 0")
    if isinstance(like, int):
        if not re.fullmatch(r"[+-]?\d{1,18}", text.strip()):
            raise ValueError("not a whole number")
        return int(text)
    if isinstance(like, float):
        number = float(text)  # ValueError on garbage
        if not math.isfinite(number):
            raise ValueError("not a finite number")
        return number
    if isinstance(like, str):
        return _text(text)
    raise ValueError("not linkable")


def _text(text: str) -> str:
    if len(text) > MAX_TEXT:
        raise ValueError(f"longer than {MAX_TEXT} characters")
    if "\x00" in text:
        raise ValueError("has a NUL character")
    return text


def fields(*keys: str) -> None:
    """Name widget keys of this run as linkable (before or after drawing them; dynamic keys included)."""
    st.session_state.setdefault(FIELDS, set()).update(keys)


def phase() -> str:
    return st.session_state.get(PHASE, LIVE)


def replaying() -> bool:
    """Whether this run replays an opened link: the view's main action shows its stored result, cache only."""
    return phase() == REPLAY


def begin() -> None:
    """At the start of every run (app.py, before the sidebar): start opening a link, or apply its seeds."""
    st.session_state[FIELDS] = set()
    if PHASE not in st.session_state:  # the session's first run
        pending = {name: st.query_params.get_all(name) for name in st.query_params}
        st.session_state.update({PHASE: PROBE if pending else LIVE, PENDING: pending, SEEDED: {}, ROUNDS: 0,
                                 NOTICES: []})
    if phase() in (SEED, REPLAY):
        for key, value in st.session_state[SEEDED].items():
            if key not in st.session_state or st.session_state.get(f"link.applied.{key}") is not True:
                st.session_state[key] = value  # before the widget exists: its value this run
                st.session_state[f"link.applied.{key}"] = True


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Around the view: while a link opens, a seeded value the view cannot take (e.g. a slider's value out of
    its range) drops the link's values for the defaults, with a notice, instead of an exception."""
    if phase() == LIVE or not st.session_state.get(SEEDED):
        yield
        return
    try:
        yield
    except StreamlitAPIException as err:
        names = sorted({param_name(k) for k in st.session_state[SEEDED]})
        for key in st.session_state[SEEDED]:
            st.session_state.pop(key, None)
            st.session_state.pop(f"link.applied.{key}", None)
        st.session_state[NOTICES].append(f"{', '.join(names)}: not usable here ({str(err).splitlines()[0][:120]})")
        st.session_state[SEEDED], st.session_state[PENDING], st.session_state[PHASE] = {}, {}, LIVE
        st.rerun()


def _linked_values() -> dict[str, tuple[str, Any]]:
    """This run's linked keys that exist, with a linkable value: param name -> (key, value)."""
    found = {}
    for key in sorted(st.session_state[FIELDS]):
        if key in st.session_state and encode(st.session_state[key]) is not None:
            found[param_name(key)] = (key, st.session_state[key])
    return found


def _advance(linked: dict[str, tuple[str, Any]]) -> None:
    """While a link opens: check the seeds that landed, seed what became visible, and move to the next phase."""
    seeded, pending, notices = st.session_state[SEEDED], st.session_state[PENDING], st.session_state[NOTICES]
    for key, value in list(seeded.items()):
        if key in st.session_state and st.session_state[key] != value and not st.session_state.get(f"link.checked.{key}"):
            notices.append(f"{param_name(key)}={encode(value)!r}: not an allowed value here, the default is used")
        if key in st.session_state:
            st.session_state[f"link.checked.{key}"] = True
    new = False
    for name, (key, current) in linked.items():
        if name in pending:
            raw = pending.pop(name)
            try:
                seeded[key] = decode(raw, current)
                new = True
            except ValueError as err:
                notices.append(f"{name}={','.join(raw)[:40]!r}: {err}, the default is used")
    st.session_state[ROUNDS] += 1
    if st.session_state[ROUNDS] >= MAX_ROUNDS:
        st.session_state[PHASE] = LIVE
    elif new:
        st.session_state[PHASE] = SEED if phase() in (PROBE, SEED) else REPLAY
        st.rerun()
    elif phase() != REPLAY:
        st.session_state[PHASE] = REPLAY
        st.rerun()
    else:
        st.session_state[PHASE] = LIVE
    if pending:
        notices.append(f"{', '.join(sorted(pending))}: not a setting of this view, ignored")
        pending.clear()


def url(params: dict[str, str | list[str]]) -> str:
    """The full address of this view with ``params`` (as far as the browser told Streamlit where it is)."""
    base = (getattr(st.context, "url", None) or "").split("?", 1)[0]
    query = urllib.parse.urlencode(params, doseq=True)
    return f"{base}?{query}" if query else base


def current_params() -> dict[str, str | list[str]]:
    """This run's linked widgets as query parameters (what the link to this view holds)."""
    return {name: encode(value) for name, (_, value) in _linked_values().items()}


def finish() -> None:
    """At the end of every run (app.py): advance an opening link; otherwise write the widgets into the URL and
    draw the link and any notice in the sidebar."""
    linked = _linked_values()
    if phase() != LIVE:
        _advance(linked)
    params = {name: encode(value) for name, (_, value) in linked.items()}
    if phase() == LIVE and st.query_params.to_dict() != {k: v if isinstance(v, str) else (v[-1] if v else "")
                                                          for k, v in params.items()}:
        st.query_params.from_dict(params)
    sb = st.sidebar
    sb.caption("Link to this view (its settings; the result shows from the cache)")
    sb.code(url(params), language=None, wrap_lines=True)
    notices = st.session_state.get(NOTICES)
    if notices:
        sb.warning("Link: " + "; ".join(notices) + ".", icon="🔗")
