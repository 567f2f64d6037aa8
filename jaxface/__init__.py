"""jaxface: reconstruct the face hidden by a face mask, in JAX/Flax."""

__version__ = "0.1.0"
