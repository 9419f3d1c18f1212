"""The version of lldd: read by pyproject.toml (setuptools dynamic metadata) and part of every cache key.

Changing it changes every cache key (:func:`lldd_core.store.keys.make_key`), so every cached result misses.
"""

__version__ = "0.1.0"
