"""Importers for published weights (PyTorch, Keras) into jaxface param trees."""
