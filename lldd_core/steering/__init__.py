"""Steering: generation with interventions (generate), the registered steering methods (methods/), the cached
pieces they read (pieces), side-by-side comparison (compare) and the service's steps (service_steps)."""
