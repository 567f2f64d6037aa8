"""Neural networks, one module per network (flax.linen, used functionally)."""
