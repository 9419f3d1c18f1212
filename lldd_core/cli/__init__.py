"""The command line: ``python -m lldd_core`` / ``lldd``."""
