#!/usr/bin/env python3
"""ONNX Runtime reference figures for qscope: float evaluation + quantize_static (QDQ).

For one ONNX model and a data set:

  (a) float evaluation with ORT (CPUExecutionProvider): top-1 vs labels when the data has labels;
  (b) onnxruntime.quantization.quantize_static with QuantFormat.QDQ, MinMax calibration,
      activations QUInt8, weights QInt8, per_channel=True; the quantized model is written to
      --quant-out and evaluated on the same eval set: top-1 and top-1 agreement with float
      (CNNs), mean cosine similarity between float and quantized outputs flattened per
      sample (BERT).

The quantized model is evaluated twice: with ORT's default graph optimizations (Q/DQ pairs
fused into integer kernels such as QLinearConv / MatMulInteger: "quant") and with
ORT_DISABLE_ALL (each Q/DQ executed as is, i.e. simulated quantization in float:
"quant_sim"). The float model is run with ORT_DISABLE_ALL.

Data:
  CNN models (input `input` [N,1,28,28]): --data / --calib are safetensors with `inputs`
  U8 [N,784] (-> reshaped to [N,1,28,28] / 255) and optional `labels` U8 [N].
  BERT models (inputs `input_ids`, `attention_mask`, `token_type_ids`): safetensors with those
  I64 [N,16] tensors. Without --calib the first --calib-rows rows (150) calibrate and the rest
  are the eval set.

Prints one JSON object (also written to --json when given).

  python scripts/onnx/ort_reference.py assets/mnist-resnet.onnx \
      --data assets/mnist-test.safetensors --calib assets/mnist-calib.safetensors \
      --quant-out /work/scratch/mnist-resnet.qdq.onnx
  python scripts/onnx/ort_reference.py tests/fixtures/onnx/bert_ts.onnx \
      --data tests/fixtures/onnx/bert_data.safetensors --quant-out /work/scratch/bert_ts.qdq.onnx
"""

from __future__ import annotations

import argparse
import collections
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from safetensors.numpy import load_file

BERT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
BATCH = 250


def session(path: Path, optimize: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def load_feeds(path: Path, kind: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    t = load_file(str(path))
    if kind == "cnn":
        x = (t["inputs"].astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)
        return {"input": x}, t.get("labels")
    return {k: t[k].astype(np.int64) for k in BERT_NAMES}, None


def rows(feeds: dict[str, np.ndarray], sl: slice) -> dict[str, np.ndarray]:
    return {k: v[sl] for k, v in feeds.items()}


def n_rows(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def run(sess: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> np.ndarray:
    n = n_rows(feeds)
    return np.concatenate([sess.run(None, rows(feeds, slice(i, i + BATCH)))[0] for i in range(0, n, BATCH)])


class Reader(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray]):
        n = n_rows(feeds)
        self.batches = iter([rows(feeds, slice(i, i + BATCH)) for i in range(0, n, BATCH)])

    def get_next(self):
        return next(self.batches, None)


def cosine_per_sample(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--data", type=Path, required=True, help="eval set (safetensors)")
    ap.add_argument("--calib", type=Path, default=None, help="calibration set (default: first --calib-rows of --data)")
    ap.add_argument("--calib-rows", type=int, default=150)
    ap.add_argument("--quant-out", type=Path, required=True, help="where to write the QDQ model")
    ap.add_argument("--json", type=Path, default=None, help="also write the JSON here")
    args = ap.parse_args()

    model = onnx.load(str(args.model))
    input_names = [i.name for i in model.graph.input]
    kind = "bert" if "input_ids" in input_names else "cnn"

    eval_feeds, labels = load_feeds(args.data, kind)
    if args.calib is not None:
        calib_feeds, _ = load_feeds(args.calib, kind)
        calib_desc = f"{args.calib} (all {n_rows(calib_feeds)} rows)"
    else:
        calib_feeds = rows(eval_feeds, slice(0, args.calib_rows))
        eval_feeds = rows(eval_feeds, slice(args.calib_rows, None))
        labels = None if labels is None else labels[args.calib_rows:]
        calib_desc = f"{args.data} rows 0..{args.calib_rows}"
    n_eval = n_rows(eval_feeds)

    t0 = time.perf_counter()
    float_out = run(session(args.model, optimize=False), eval_feeds)
    t_float = time.perf_counter() - t0

    args.quant_out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    quantize_static(
        str(args.model),
        str(args.quant_out),
        Reader(calib_feeds),
        quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.MinMax,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    t_quant = time.perf_counter() - t0
    t0 = time.perf_counter()
    quant_out = run(session(args.quant_out, optimize=True), eval_feeds)
    t_qeval = time.perf_counter() - t0
    sim_out = run(session(args.quant_out, optimize=False), eval_feeds)

    qmodel = onnx.load(str(args.quant_out))
    result: dict = {
        "model": str(args.model),
        "kind": kind,
        "eval_data": f"{args.data}" + ("" if args.calib is not None else f" rows {args.calib_rows}..{args.calib_rows + n_eval}"),
        "calib_data": calib_desc,
        "n_eval": n_eval,
        "quantize_static": {
            "quant_format": "QDQ", "calibrate_method": "MinMax", "activation_type": "QUInt8",
            "weight_type": "QInt8", "per_channel": True,
        },
        "quant_model": str(args.quant_out),
        "quant_model_bytes": args.quant_out.stat().st_size,
        "quant_model_ops": dict(sorted(collections.Counter(n.op_type for n in qmodel.graph.node).items())),
        "versions": {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__},
    }
    if kind == "cnn":
        fp, qp, sp = float_out.argmax(1), quant_out.argmax(1), sim_out.argmax(1)
        if labels is not None:
            result["float_top1"] = float((fp == labels).mean())
            result["quant_top1"] = float((qp == labels).mean())
            result["quant_sim_top1"] = float((sp == labels).mean())
        result["quant_agreement"] = float((qp == fp).mean())
        result["quant_sim_agreement"] = float((sp == fp).mean())
    result["quant_mean_cosine"] = float(cosine_per_sample(float_out, quant_out).mean())
    result["quant_sim_mean_cosine"] = float(cosine_per_sample(float_out, sim_out).mean())
    result["quant_max_abs_diff"] = float(np.abs(float_out - quant_out).max())
    result["timing_s"] = {
        "float_eval": round(t_float, 3),
        "quantize_static": round(t_quant, 3),
        "quant_eval": round(t_qeval, 3),
        "quantize_static_plus_eval": round(t_quant + t_qeval, 3),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
