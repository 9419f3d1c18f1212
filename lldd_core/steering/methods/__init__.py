"""Steering methods: the protocol and the registry, one file per method (additive, llv, jacobian, lqr)."""
