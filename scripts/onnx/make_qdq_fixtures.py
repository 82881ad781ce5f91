#!/usr/bin/env python3
"""Fixtures for qscope's QDQ import: models quantized by ONNX Runtime's quantize_static, with
ORT's own outputs on a fixed input, so the tests need no Python.

For resnet_ts and bert_ts (tests/fixtures/onnx/): quantize_static with QuantFormat.QDQ, MinMax,
activations QUInt8, weights QInt8 per channel (ORT's defaults otherwise), calibrated on the
bundled calibration digits (resnet) or the first 100 token rows (BERT); then

  NAME.ortq.onnx          the QDQ model ORT wrote
  NAME.ortq.ref.npz       the inputs (first 200 test digits / rows 100..160 of the BERT data)
                          and ORT's outputs: `output` with ORT_DISABLE_ALL (each Q/DQ run as
                          written) and `output_opt` with the default optimizations (fused int8
                          kernels)

  python scripts/onnx/make_qdq_fixtures.py      (pinned versions: requirements.txt)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "onnx"
BERT = ["input_ids", "attention_mask", "token_type_ids"]


class Reader(CalibrationDataReader):
    def __init__(self, feeds: dict[str, np.ndarray], batch: int = 250):
        n = len(next(iter(feeds.values())))
        self.it = iter([{k: v[i : i + batch] for k, v in feeds.items()} for i in range(0, n, batch)])

    def get_next(self):
        return next(self.it, None)


def session(path: Path, optimize: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def make(name: str, calib: dict[str, np.ndarray], inputs: dict[str, np.ndarray]) -> None:
    src, out = FIX / f"{name}.onnx", FIX / f"{name}.ortq.onnx"
    quantize_static(
        str(src),
        str(out),
        Reader(calib),
        quant_format=QuantFormat.QDQ,
        calibrate_method=CalibrationMethod.MinMax,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
    )
    sim = session(out, False).run(None, inputs)[0]
    opt = session(out, True).run(None, inputs)[0]
    np.savez(FIX / f"{name}.ortq.ref.npz", **inputs, output=sim, output_opt=opt)
    print(f"{out.name}: {out.stat().st_size} bytes; sim vs opt max |diff| {np.abs(sim - opt).max():.3g}")


def main() -> None:
    cal = load_file(str(ROOT / "assets" / "mnist-calib.safetensors"))["inputs"]
    test = load_file(str(ROOT / "assets" / "mnist-test.safetensors"))["inputs"]
    img = lambda x: (x.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)  # noqa: E731
    make("resnet_ts", {"input": img(cal)}, {"input": img(test[:200])})
    b = load_file(str(FIX / "bert_data.safetensors"))
    make(
        "bert_ts",
        {k: b[k][:100].astype(np.int64) for k in BERT},
        {k: b[k][100:160].astype(np.int64) for k in BERT},
    )


if __name__ == "__main__":
    main()
