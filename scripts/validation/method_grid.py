"""Issue 12's table for every accuracy method: for the bundled MLP and CNN at W4A4, W3A3,
W4A3 and W2A8 (mse weights, per channel), the best top-1 over the minmax/mse/kl activation
strategies with no method and with each method alone (and GPTQ + bias correction +
refinement), and the longest time the method took over the three runs (`timings_ms`).

Usage: python method_grid.py QSCOPE EVAL.safetensors [CALIB.safetensors]
Prints a Markdown table. Standard library only.
"""

import json
import subprocess
import sys

METHODS = {
    "none": ([], None),
    "bias correction": (["--bias-correction"], "bias_correction"),
    "CLE": (["--cle"], "cle"),
    "GPTQ": (["--weight-rounding", "gptq"], "gptq"),
    "AdaRound": (["--weight-rounding", "adaround"], "adaround"),
    "refinement": (["--act-refine"], "act_refine"),
    "GPTQ + BC + refinement": (["--weight-rounding", "gptq", "--bias-correction", "--act-refine"],
                               None),
}


def run(qscope, args):
    out = subprocess.run([qscope, "eval", "--json", *args], capture_output=True, text=True,
                         check=True).stdout
    return json.loads(out)


def main():
    qscope, data = sys.argv[1], sys.argv[2]
    calib = ["--calib", sys.argv[3]] if len(sys.argv) > 3 else []
    print("| cell | float | " + " | ".join(METHODS) + " |")
    print("| --- " * (len(METHODS) + 2) + "|")
    for model in ("mnist-mlp", "mnist-cnn"):
        for w, a in ((4, 4), (3, 3), (4, 3), (2, 8)):
            cells, fp = [], 0.0
            for flags, timing in METHODS.values():
                best, slowest = 0.0, 0.0
                for strategy in ("minmax", "mse", "kl"):
                    r = run(qscope, ["--model", model, "--eval", data, *calib, "--weight-bits",
                                     str(w), "--act-bits", str(a), "--weight-strategy", "mse",
                                     "--act-strategy", strategy, *flags])
                    fp = r["fp32_accuracy"] * 100
                    best = max(best, r["quant_accuracy"] * 100)
                    if timing:
                        slowest = max(slowest, r["timings_ms"][timing])
                cells.append(f"{best:.2f}" + (f" ({slowest / 1000:.2f} s)" if timing else ""))
            print(f"| {model[6:].upper()} W{w}A{a} | {fp:.2f} | " + " | ".join(cells) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
