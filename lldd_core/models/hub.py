"""The Hugging Face hub without waiting on it: offline mode, a quick reachability probe, the local cache.

Without a network the hub client retries every request with backoff (about 25 s per file, so ~50 s for
a config and a tokenizer) before it gives up. Hub models are therefore resolved in one of three ways,
decided before any hub request (:func:`hub_access`):

- online (the probe reached the endpoint): the ordinary hub path;
- offline (``HF_HUB_OFFLINE=1``, or the endpoint unreachable) with the model in the local cache:
  ``local_files_only=True``, which reads the cache and never touches the network;
- offline without the model: a one-line error at once, saying what to do.

The probe is one ``HEAD`` of the endpoint through the hub client's own session (its proxies and
headers), bounded by :data:`PROBE_TIMEOUT_S` in a thread (name resolution included), and its answer
is remembered for :data:`PROBE_TTL_S` so reruns of a page do not probe again.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..errors import ModelLoadError

#: The longest the reachability probe may take before the hub counts as unreachable.
PROBE_TIMEOUT_S = 3.0
#: How long a probe's answer is reused (per endpoint).
PROBE_TTL_S = 30.0
#: Files whose presence in a cached snapshot means the weights are there.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_TRUE = {"1", "on", "yes", "true"}

_probes: dict[str, tuple[float, bool]] = {}
_probes_lock = threading.Lock()


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, read now, or was set when the hub client loaded."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    return constants.HF_HUB_OFFLINE or any((v or "").strip().lower() in _TRUE for v in flags)


def hub_endpoint() -> str:
    """The endpoint the hub client talks to (``HF_ENDPOINT`` as it was read when the client loaded)."""
    from huggingface_hub import constants

    return constants.ENDPOINT


def hub_cache_dir() -> Path:
    """The hub's model cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else the hub client's default.

    Read now rather than at import, so a cache folder set after start (a test, a notebook) is the one looked in.
    """
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE", "").strip():
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME", "").strip():
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def is_cached(model: str, revision: str | None = None) -> bool:
    """True if the local hub cache holds ``model`` at ``revision`` (default ``main``): its config and weights.

    Reads folders only (``try_to_load_from_cache``); never touches the network.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        config = try_to_load_from_cache(model, "config.json", cache_dir=hub_cache_dir(), revision=revision)
    except (ValueError, OSError):  # not a valid repo id, an unreadable cache: not available
        return False
    if not isinstance(config, str):
        return False
    snapshot = Path(config).parent
    try:
        return any(p.suffix in _WEIGHT_SUFFIXES for p in snapshot.iterdir())
    except OSError:
        return False


def _probe(endpoint: str, timeout: float) -> bool:
    """One ``HEAD`` of ``endpoint`` through the hub client's session; any HTTP answer counts as reachable."""
    from huggingface_hub import get_session

    answer: list[bool] = []

    def ask() -> None:
        try:
            get_session().head(endpoint, timeout=timeout, follow_redirects=False)
            answer.append(True)
        except Exception:  # noqa: BLE001  (refused, DNS failure, timeout, proxy error: all "unreachable")
            answer.append(False)

    worker = threading.Thread(target=ask, name="lldd-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)  # bounds what the request's own timeout does not: name resolution
    return bool(answer and answer[0])


def hub_reachable(endpoint: str | None = None, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers within ``timeout`` seconds (remembered for :data:`PROBE_TTL_S` per endpoint)."""
    endpoint = endpoint or hub_endpoint()
    now = time.monotonic()
    with _probes_lock:
        seen = _probes.get(endpoint)
        if seen is not None and now - seen[0] < PROBE_TTL_S:
            return seen[1]
    reachable = _probe(endpoint, timeout)
    with _probes_lock:
        _probes[endpoint] = (time.monotonic(), reachable)
    return reachable


def forget_probes() -> None:
    """Drop remembered probe answers (the next resolution probes again)."""
    with _probes_lock:
        _probes.clear()


def hub_revision(model: str, revision: str | None, access: dict) -> str:
    """The commit ``revision`` (default: the main branch) of ``model`` points to, as a ``ResolvedRevision``.

    One hub call online; from the cache's ``refs/`` with ``access["local_files_only"]``. Passing the answer
    as ``revision`` pins config, tokenizer and weights to one commit, and ``.resolved`` keys the results.
    """
    from huggingface_hub import HfApi

    return HfApi().resolve_revision(model, revision=revision, cache_dir=access.get("cache_dir"),
                                    local_files_only=bool(access.get("local_files_only")))


def hub_access(model: str, revision: str | None = None) -> dict:
    """``from_pretrained`` keyword arguments for the hub model ``model``, decided without waiting on the hub.

    The cache folder is always named (:func:`hub_cache_dir`), so loading reads the cache that was checked;
    ``local_files_only`` is added when the hub is unreachable (or offline mode is on) but the model is
    cached. Otherwise raises :class:`~lldd_core.errors.ModelLoadError` at once.
    """
    cache = {"cache_dir": str(hub_cache_dir())}
    if hub_offline():
        if is_cached(model, revision):
            return {**cache, "local_files_only": True}
        raise ModelLoadError(
            f"HF_HUB_OFFLINE is set and '{model}' is not in the local Hugging Face cache: use a local path or a "
            "demo model, or set HF_HUB_OFFLINE=0 when online."
        )
    if hub_reachable():
        return cache
    if is_cached(model, revision):
        return {**cache, "local_files_only": True}
    raise ModelLoadError(
        f"The Hugging Face hub ({hub_endpoint()}) is unreachable and '{model}' is not in the local cache: use a "
        "local path or a demo model, or connect to the network once to download it (HF_HUB_OFFLINE=0)."
    )
