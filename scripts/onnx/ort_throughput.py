"""ONNX Runtime's float throughput on an ONNX file at batch 256 (CPU provider, one intra-op
thread, default optimizations), beside qscope's criterion `engines` group.

    python ort_throughput.py MODEL.onnx [--threads 1] [--batch 256]

Prints the median milliseconds per batch over 20 runs after 3 warm-up runs. MNIST-shaped
inputs ([N,1,28,28] float); BERT-style models get random int64 ids of length 16.
"""
import argparse, statistics, time
import numpy as np
import onnxruntime as ort

p = argparse.ArgumentParser()
p.add_argument("model")
p.add_argument("--threads", type=int, default=1)
p.add_argument("--batch", type=int, default=256)
a = p.parse_args()
so = ort.SessionOptions()
so.intra_op_num_threads = a.threads
so.inter_op_num_threads = 1
s = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
rng = np.random.default_rng(0)
feed = {}
for i in s.get_inputs():
    if "int" in i.type:
        feed[i.name] = rng.integers(0, 100, (a.batch, 16)).astype(np.int64)
        if "mask" in i.name:
            feed[i.name] = np.ones((a.batch, 16), np.int64)
        if "type" in i.name:
            feed[i.name] = np.zeros((a.batch, 16), np.int64)
    else:
        feed[i.name] = rng.random((a.batch, 1, 28, 28), dtype=np.float32)
for _ in range(3):
    s.run(None, feed)
ts = []
for _ in range(20):
    t = time.perf_counter()
    s.run(None, feed)
    ts.append((time.perf_counter() - t) * 1e3)
print(f"{a.model}: median {statistics.median(ts):.2f} ms per batch of {a.batch} ({a.threads} thread)")
