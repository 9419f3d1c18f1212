"""The one progress callback type of lldd (no torch: cheap to import anywhere)."""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(fraction, message)``: ``fraction`` in [0, 1] of the work done, ``message`` says what runs now.
ProgressFn = Callable[[float, str], None]
