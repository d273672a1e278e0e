"""ONNX Runtime threads that sleep after a run (`tts/models/onnx_graph.session_options`).

koe runs several graphs in a row on few cores (a SoVITS chunk: text encoder, flow, generator), and a
session's threads that keep spinning after its run take the cores from the next graph. So only the
T2S decode step (a run every few milliseconds) keeps ONNX Runtime's spinning. Measured by what the
process really does: the CPU time it burns while it waits, in a fresh interpreter of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = """
import json, sys, time
import numpy as np
from onnx import TensorProto, helper
from tts.models.onnx_graph import GraphBuilder, cpu_session

g = GraphBuilder()
weight = g.const("w", np.random.default_rng(0).standard_normal((1024, 1024)).astype(np.float32))
g.node("MatMul", ["x", weight], "y")
x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1024])
graph = g.build("matmul", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1024])])
session = cpu_session(graph, threads=2, spin=sys.argv[1] == "spin")
feed = {"x": np.ones((256, 1024), np.float32)}
for _ in range(5):
    session.run(None, feed)
started = time.process_time()
time.sleep(0.3)  # the process does nothing now: only spinning threads burn CPU
print(json.dumps({"idle_cpu_ms": (time.process_time() - started) * 1000}))
"""


def _idle_cpu_ms(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])["idle_cpu_ms"]


def test_a_session_without_spinning_burns_no_cpu_after_its_run():
    assert _idle_cpu_ms("sleep") < 3.0


def test_a_spinning_session_keeps_a_core_busy_after_its_run():
    # what the T2S decode step keeps (its next run comes within milliseconds), and why nothing else does
    assert _idle_cpu_ms("spin") > 5.0
