#!/usr/bin/env python3
"""The bundled MNIST MLP and CNN as fp32 ONNX graphs, for ONNX Runtime reference timings.

    python scripts/onnx/export_bundled.py OUT_DIR

Writes OUT_DIR/mnist-mlp.onnx and OUT_DIR/mnist-cnn.onnx from assets/mnist-{mlp,cnn}.safetensors:
input `input` [N,1,28,28] in [0,1], the normalization (x - 0.1307) / 0.3081 as Sub/Div nodes (as
in assets/mnist-resnet.onnx), then the layers of the embedded spec (Gemm, Conv, Relu, MaxPool,
Flatten). The same inputs as scripts/onnx/ort_throughput.py and ort_reference.py feed.
Nothing here runs at test time.
"""
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]


def graph(name, weights, layers):
    nodes, inits = [], []
    const = lambda n, v: inits.append(numpy_helper.from_array(np.asarray(v, np.float32), n))
    const("mean", [0.1307])
    const("std", [0.3081])
    nodes += [helper.make_node("Sub", ["input", "mean"], ["sub"]),
              helper.make_node("Div", ["sub", "std"], ["x0"])]
    x = "x0"
    for i, (op, args) in enumerate(layers):
        y = f"x{i + 1}"
        if op == "linear":
            const(args[0], weights[args[0]])
            const(args[1], weights[args[1]])
            nodes.append(helper.make_node("Gemm", [x, args[0], args[1]], [y], transB=1))
        elif op == "conv":
            const(args[0], weights[args[0]])
            const(args[1], weights[args[1]])
            k = weights[args[0]].shape[2]
            nodes.append(helper.make_node("Conv", [x, args[0], args[1]], [y],
                                          kernel_shape=[k, k], pads=[2, 2, 2, 2]))
        elif op == "relu":
            nodes.append(helper.make_node("Relu", [x], [y]))
        elif op == "maxpool":
            nodes.append(helper.make_node("MaxPool", [x], [y], kernel_shape=[2, 2], strides=[2, 2]))
        elif op == "flatten":
            nodes.append(helper.make_node("Flatten", [x], [y], axis=1))
        x = y
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", 10])],
        inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    mlp = load_file(ROOT / "assets/mnist-mlp.safetensors")
    onnx.save(graph("mnist-mlp", mlp, [
        ("flatten", ()), ("linear", ("0.weight", "0.bias")), ("relu", ()),
        ("linear", ("2.weight", "2.bias")), ("relu", ()), ("linear", ("4.weight", "4.bias"))]),
        out / "mnist-mlp.onnx")
    cnn = load_file(ROOT / "assets/mnist-cnn.safetensors")
    onnx.save(graph("mnist-cnn", cnn, [
        ("conv", ("features.0.weight", "features.0.bias")), ("relu", ()), ("maxpool", ()),
        ("conv", ("features.3.weight", "features.3.bias")), ("relu", ()), ("maxpool", ()),
        ("flatten", ()), ("linear", ("classifier.0.weight", "classifier.0.bias")), ("relu", ()),
        ("linear", ("classifier.2.weight", "classifier.2.bias"))]),
        out / "mnist-cnn.onnx")


if __name__ == "__main__":
    main()
