"""ONNX Runtime's int8 depthwise conv beside its int8 matrix multiply, to put qscope's
depthwise-to-GEMM rate ratio (issue 8's target: half) next to the same ratio in MLAS's kernels.

One QLinearConv node (uint8 activations, int8 per-channel weights, int32 bias, uint8 out, CPU
provider, default optimizations) with a depthwise 3x3 layer of the MobileNetV2 fixture:
C channels, H x W, stride S, pad 1, batch 256; and one MatMulInteger 256x784x256 (the shape of
qscope's `gemm_i8` bench row). Both on one thread.

    python ort_depthwise.py [--channels 64] [--size 28] [--stride 1] [--runs 30]

Prints the median ms and GMAC/s of each and the depthwise/GEMM ratio.
"""
import argparse, statistics, time
import numpy as np
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("--channels", type=int, default=64)
p.add_argument("--size", type=int, default=28)
p.add_argument("--stride", type=int, default=1)
p.add_argument("--runs", type=int, default=30)
a = p.parse_args()
rng = np.random.default_rng(0)
N, C, H, S = 256, a.channels, a.size, a.stride
OH = (H + 2 - 3) // S + 1


def session(graph):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])


def median_ms(s, feed):
    for _ in range(5):
        s.run(None, feed)
    ts = []
    for _ in range(a.runs):
        t = time.perf_counter()
        s.run(None, feed)
        ts.append((time.perf_counter() - t) * 1e3)
    return statistics.median(ts)


inits = [
    numpy_helper.from_array(np.array(0.02, np.float32), "xs"),
    numpy_helper.from_array(np.array(128, np.uint8), "xz"),
    numpy_helper.from_array(rng.integers(-127, 128, (C, 1, 3, 3), dtype=np.int8), "w"),
    numpy_helper.from_array(rng.uniform(0.001, 0.01, C).astype(np.float32), "ws"),
    numpy_helper.from_array(np.zeros(C, np.int8), "wz"),
    numpy_helper.from_array(np.array(0.05, np.float32), "ys"),
    numpy_helper.from_array(np.array(128, np.uint8), "yz"),
    numpy_helper.from_array(rng.integers(-1000, 1000, C, dtype=np.int32), "b"),
]
node = helper.make_node(
    "QLinearConv", ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], ["y"],
    group=C, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[S, S],
)
dw = session(helper.make_graph(
    [node], "depthwise",
    [helper.make_tensor_value_info("x", TensorProto.UINT8, [N, C, H, H])],
    [helper.make_tensor_value_info("y", TensorProto.UINT8, [N, C, OH, OH])], inits))
x = rng.integers(0, 256, (N, C, H, H), dtype=np.uint8)
dw_ms = median_ms(dw, {"x": x})
dw_rate = N * C * OH * OH * 9 / dw_ms / 1e6

M, K, NN = 256, 784, 256
mm = session(helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "gemm_i8",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [M, NN])],
    [numpy_helper.from_array(rng.integers(-128, 128, (K, NN), dtype=np.int8), "w")]))
mm_ms = median_ms(mm, {"a": rng.integers(0, 256, (M, K), dtype=np.uint8)})
mm_rate = M * K * NN / mm_ms / 1e6
print(f"QLinearConv depthwise {C}x{H}x{H} stride {S}: {dw_ms:.2f} ms, {dw_rate:.1f} GMAC/s; "
      f"MatMulInteger 256x784x256: {mm_ms * 1e3:.0f} us, {mm_rate:.1f} GMAC/s; "
      f"ratio {dw_rate / mm_rate:.3f} (1 thread)")
