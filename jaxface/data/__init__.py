"""Data: sources, landmark layouts, mask rendering and grain pipelines."""
