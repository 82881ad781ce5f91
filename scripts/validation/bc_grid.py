"""The issue-12 table for bias correction on an evaluation set of your choice: for the bundled
MLP and CNN at W4A4, W3A3, W4A3 and W2A8 (mse weights, per channel), top-1 with each of the
minmax/mse/kl activation strategies without and with `--bias-correction`, and the best of the
three both ways.

Usage: python bc_grid.py QSCOPE EVAL.safetensors [CALIB.safetensors]
(QSCOPE: the release binary; CALIB defaults to the bundled calibration digits.) Standard
library only (and `method_grid.py` beside it).
"""

import sys

from method_grid import run


def top1(qscope, args):
    return run(qscope, args)["quant_accuracy"] * 100


def main():
    qscope, data = sys.argv[1], sys.argv[2]
    calib = ["--calib", sys.argv[3]] if len(sys.argv) > 3 else []
    for model in ("mnist-mlp", "mnist-cnn"):
        for w, a in ((4, 4), (3, 3), (4, 3), (2, 8)):
            best = [0.0, 0.0]
            line = f"{model} W{w}A{a}"
            for strategy in ("minmax", "mse", "kl"):
                args = ["--model", model, "--eval", data, *calib, "--weight-bits", str(w),
                        "--act-bits", str(a), "--weight-strategy", "mse",
                        "--act-strategy", strategy]
                plain, bc = top1(qscope, args), top1(qscope, args + ["--bias-correction"])
                best = [max(best[0], plain), max(best[1], bc)]
                line += f" | {strategy} {plain:.3f} -> {bc:.3f}"
            print(f"{line} || best {best[0]:.3f} -> {best[1]:.3f} ({best[1] - best[0]:+.3f})",
                  flush=True)


if __name__ == "__main__":
    main()
