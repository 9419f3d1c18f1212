"""Steering: generation with interventions, the registered steering methods, side-by-side comparison."""
