"""The pipeline benchmark's full-size configs build a valid pipeline."""

from jaxface import pipeline
from jaxface.bench import pipeline as bench_pipeline


def test_full_size_configs_pass_every_task_check():
  pipe = pipeline.Pipeline(bench_pipeline._full_configs(), "float32")
  assert pipe.size == 256
