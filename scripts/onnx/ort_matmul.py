"""ONNX Runtime's int8 matrix multiply on the shape of qscope's GEMM benchmark, 256x784x256
(the `gemm_i8` row of `cargo bench --bench qscope -- depthwise`): one MatMulInteger node,
uint8 activations [256, 784] times constant int8 weights [784, 256] to int32, CPU provider,
default optimizations. The same contract as qscope's kernel: integer codes in, i32 sums out.

    python ort_matmul.py [--threads 1] [--runs 200]

Prints the median microseconds and GMAC/s over `runs` runs after 20 warm-up runs, and how
many of ORT's sums differ from the exact product (on CPUs without AVX-512 VNNI or AVX-VNNI,
MLAS's u8s8 kernel adds pairs of products in saturating i16 `vpmaddubsw`, so full-range codes
can differ; qscope's kernels are exact everywhere).
"""
import argparse, statistics, time
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
import onnxruntime as ort

M, K, N = 256, 784, 256

p = argparse.ArgumentParser()
p.add_argument("--threads", type=int, default=1)
p.add_argument("--runs", type=int, default=200)
a = p.parse_args()

rng = np.random.default_rng(0)
w = rng.integers(-128, 128, (K, N), dtype=np.int8)
graph = helper.make_graph(
    [helper.make_node("MatMulInteger", ["a", "w"], ["y"])],
    "gemm_i8",
    [helper.make_tensor_value_info("a", TensorProto.UINT8, [M, K])],
    [helper.make_tensor_value_info("y", TensorProto.INT32, [M, N])],
    [numpy_helper.from_array(w, "w")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
s = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
x = rng.integers(0, 256, (M, K), dtype=np.uint8)
want = x.astype(np.int64) @ w.astype(np.int64)
got = s.run(None, {"a": x})[0]
wrong = int((got != want).sum())
worst = int(np.abs(got.astype(np.int64) - want).max())
for _ in range(20):
    s.run(None, {"a": x})
ts = []
for _ in range(a.runs):
    t = time.perf_counter()
    s.run(None, {"a": x})
    ts.append((time.perf_counter() - t) * 1e6)
us = statistics.median(ts)
print(f"MatMulInteger {M}x{K}x{N}: median {us:.1f} us, {M * K * N / us / 1e3:.1f} GMAC/s ({a.threads} thread); "
      f"{wrong} of {got.size} sums differ from the exact product (largest error {worst})")
