"""The pipeline benchmark's full-size configs build a valid pipeline."""

from jaxface import bench
from jaxface import pipeline


def test_full_size_configs_pass_every_task_check():
  pipe = pipeline.Pipeline(bench.full_size_configs(), "float32")
  assert pipe.size == 256
