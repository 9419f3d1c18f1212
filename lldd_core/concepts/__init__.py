"""Concept datasets: built-ins, hub and user files, splits, class-mean directions."""
