#!/usr/bin/env python3
"""A small fixture for auto_pad: Conv SAME_UPPER (stride 2, odd input), Conv SAME_LOWER
(kernel 2, stride 2, dilation 1), MaxPool SAME_UPPER and AveragePool SAME_LOWER, built with
onnx.helper (opset 17), random weights from a fixed seed, and ONNX Runtime's output on a fixed
input (npz: `input`, `output`).

  python scripts/onnx/make_autopad_fixture.py      (pinned versions: requirements.txt)
"""

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "onnx"


def main() -> None:
    rng = np.random.default_rng(7)
    w1 = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((5, 4, 2, 2)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(4).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv_same_upper", auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv_same_lower", auto_pad="SAME_LOWER", strides=[2, 2]),
        helper.make_node("MaxPool", ["c2"], ["p1"], name="maxpool_same_upper", auto_pad="SAME_UPPER", kernel_shape=[3, 3], strides=[2, 2]),
        helper.make_node("AveragePool", ["r1"], ["p2"], name="avgpool_same_lower", auto_pad="SAME_LOWER", kernel_shape=[2, 2], strides=[1, 1]),
        helper.make_node("Flatten", ["p1"], ["f1"], name="flat1"),
        helper.make_node("Flatten", ["p2"], ["f2"], name="flat2"),
        helper.make_node("Concat", ["f1", "f2"], ["output"], name="concat", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "autopad",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 9, 9])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", None])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = OUT / "autopad.onnx"
    onnx.save(model, path)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.savez(OUT / "autopad.ref.npz", input=x, output=y)
    print(path, y.shape)


if __name__ == "__main__":
    main()
