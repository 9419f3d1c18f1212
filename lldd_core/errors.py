"""Project exceptions: every error a user can cause carries a message that says what to do.

Pages show ``str(err)`` with ``st.error``; the CLI prints it as one line on stderr and exits
non-zero. Anything that is *not* an :class:`LLDDError` is a bug in lldd and may show a traceback.
"""

from __future__ import annotations


class LLDDError(Exception):
    """Base class for errors caused by user input or the environment, not by a bug."""


class ModelLoadError(LLDDError):
    """The model could not be loaded (unknown id, gated, offline, bad files, out of memory)."""


class UnsupportedFamilyError(LLDDError):
    """The model's architecture has no adapter in :mod:`lldd_core.models.arch`."""


class InputError(LLDDError):
    """A prompt or parameter is invalid (empty, too long, out of range)."""


class ResourceError(LLDDError):
    """The computation would not fit in memory, or ran out of it."""


class NumericalError(LLDDError):
    """The computation produced non-finite values (typically half precision overflow)."""
