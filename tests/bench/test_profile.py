"""The profile table: operations summed over calls, named by their source."""

import gzip
import json

from jaxface.bench import profile


def test_top_operations_sums_calls_and_names_sources(tmp_path):
  events = [
      {"ph": "X", "name": "convolution.3", "dur": 4000},
      {"ph": "X", "name": "convolution.3", "dur": 2000},
      {"ph": "X", "name": "fusion.1", "dur": 5000},
      {"ph": "X", "name": "ThunkExecutor::Execute", "dur": 99000},
      {"ph": "i", "name": "convolution.3"},
  ]
  trace = tmp_path / "perfetto_trace.json.gz"
  with gzip.open(trace, "wt") as f:
    json.dump({"traceEvents": events}, f)
  hlo = ('  %fusion.1 = f32[2] fusion(%a), kind=kLoop\n'
         '  %convolution.3 = f32[4,8] convolution(%x, %k), window={size=3}, '
         'metadata={op_name="jit(step)/transpose(jvp(G))/conv1/conv" '
         'stack_frame_id=3}\n')
  rows = profile.top_operations(str(trace), hlo, count=5)
  assert rows == [(6.0, 2, "convolution.3",
                   "jit(step)/transpose(jvp(G))/conv1/conv"),
                  (5.0, 1, "fusion.1", "")]
