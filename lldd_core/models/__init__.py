"""Models: what the user asks for, loading, placement of tensors, memory estimates, family adapters."""
