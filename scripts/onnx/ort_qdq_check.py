#!/usr/bin/env python3
"""Runs qscope's QDQ export in ONNX Runtime and compares it with qscope's integer engine.

For each model: `qscope eval --save-outputs` writes qscope's float and integer outputs on the
evaluation set, `qscope export --out M.onnx` writes the QDQ file with the same parameters
(W8A8, per-channel, minmax by default; extra qscope flags after `--`), and ONNX Runtime
(CPUExecutionProvider) runs the file twice:

  ort_opt:  default graph optimizations (Q/DQ fused into integer kernels: QLinearConv,
            MatMulInteger, QGemm ...), what a deployment runs;
  ort_sim:  ORT_DISABLE_ALL, each Q/DQ executed as written (simulated quantization in float).

Figures per run: top-1 (when the data has labels), top-1 agreement with qscope's integer
outputs, the mean cosine with them, and the largest |ORT - qscope| in units of the output
point's scale (one unit = one integer step of the last quantized tensor).

  python scripts/onnx/ort_qdq_check.py --qscope target/release/qscope --out /work/scratch/qdq
Prints one JSON object (also written to --json).
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parents[2]
MNIST = ROOT / "assets" / "mnist-test.safetensors"
BERT = ROOT / "tests" / "fixtures" / "onnx" / "bert_data.safetensors"
MODELS = {
    "mnist-mlp": ("mnist-mlp", MNIST, "flat"),
    "mnist-cnn": ("mnist-cnn", MNIST, "image"),
    "mnist-resnet": ("mnist-resnet", MNIST, "image"),
    "resnet_ts": (str(ROOT / "tests/fixtures/onnx/resnet_ts.onnx"), MNIST, "image"),
    "resnet_dynamo": (str(ROOT / "tests/fixtures/onnx/resnet_dynamo.onnx"), MNIST, "image"),
    "mobilenetv2_ts": (str(ROOT / "tests/fixtures/onnx/mobilenetv2_ts.onnx"), MNIST, "image"),
    "bert_ts": (str(ROOT / "tests/fixtures/onnx/bert_ts.onnx"), BERT, "bert"),
}


def session(path: Path, optimize: bool) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    so.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def feeds(data: Path, kind: str) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    t = load_file(str(data))
    if kind == "bert":
        return {k: t[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]}, None
    x = t["inputs"].astype(np.float32) / 255.0
    if kind == "image":
        x = x.reshape(-1, 1, 28, 28)
    return {"input": x}, t.get("labels")


def output_scale(path: Path) -> float | None:
    """The scale of the Q/DQ pair that produces the graph's first output, if any."""
    m = onnx.load(str(path))
    out = m.graph.output[0].name
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in m.graph.initializer}
    for n in m.graph.node:
        if n.op_type == "DequantizeLinear" and n.output[0] == out:
            return float(inits[n.input[1]])
    return None


def run(sess: ort.InferenceSession, f: dict[str, np.ndarray]) -> np.ndarray:
    names = [i.name for i in sess.get_inputs()]
    n = len(next(iter(f.values())))
    return np.concatenate([sess.run(None, {k: f[k][i : i + 250] for k in names})[0] for i in range(0, n, 250)])


def compare(ort_out: np.ndarray, q: np.ndarray, labels: np.ndarray | None, scale: float | None) -> dict:
    a = ort_out.reshape(len(ort_out), -1).astype(np.float64)
    b = q.reshape(len(q), -1).astype(np.float64)
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)
    r = {
        "cosine_vs_qscope": float(cos.mean()),
        "max_abs_diff": float(np.abs(a - b).max()),
        "steps_max": None if scale is None else float(np.abs(a - b).max() / scale),
        "elements_differing": float((np.abs(a - b) > 1e-6).mean()),
    }
    if labels is not None or a.shape[1] <= 100:
        r["agreement_vs_qscope"] = float((a.argmax(1) == b.argmax(1)).mean())
    if labels is not None:
        r["top1"] = float((ort_out.argmax(1) == labels).mean())
    return r


def check(name: str, qscope: Path, out: Path, extra: list[str]) -> dict:
    model, data, kind = MODELS[name]
    common = ["--model", model, "--calib", str(data), "--eval", str(data)] + extra
    if kind != "bert":
        common = ["--model", model] + extra
    onnx_path, saved = out / f"{name}.qdq.onnx", out / f"{name}.outputs.safetensors"
    subprocess.run([str(qscope), "export", *common, "--out", str(onnx_path)], check=True, capture_output=True)
    rep = subprocess.run(
        [str(qscope), "eval", *common, "--json", "--save-outputs", str(saved)], check=True, capture_output=True
    )
    report = json.loads(rep.stdout)
    s = load_file(str(saved))
    f, labels = feeds(data, kind)
    scale = output_scale(onnx_path)
    r = {"qscope_top1": report.get("quant_accuracy"), "qscope_output_cosine": report.get("output_cosine")}
    for tag, opt in [("ort_opt", True), ("ort_sim", False)]:
        r[tag] = compare(run(session(onnx_path, opt), f), s["quant"], labels, scale)
    if labels is not None:
        r["float_top1_qscope"] = float((s["float"].argmax(1) == labels).mean())
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qscope", type=Path, default=ROOT / "target" / "release" / "qscope")
    ap.add_argument("--out", type=Path, required=True, help="folder for the exported files")
    ap.add_argument("--models", nargs="*", default=list(MODELS))
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("extra", nargs="*", help="qscope flags (after --)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    res = {
        "onnxruntime": ort.__version__,
        "qscope_flags": args.extra,
        "models": {m: check(m, args.qscope, args.out, args.extra) for m in args.models},
    }
    text = json.dumps(res, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
