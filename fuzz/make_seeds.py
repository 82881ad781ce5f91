"""Writes the small seed corpus of the fuzz targets (run with numpy + safetensors installed):
python make_seeds.py /path/to/qscope-binary"""
import io, os, subprocess, sys, tempfile
import numpy as np
from safetensors.numpy import save

QSCOPE = sys.argv[1]
HERE = os.path.dirname(os.path.abspath(__file__))
MLP_SPEC = """name = "tiny"
input_shape = [4]
input_mean = [0.5]
input_std = [0.25]
[[layers]]
name = "fc1"
op = "linear"
weight = "w1"
bias = "b1"
[[layers]]
op = "relu"
[[layers]]
name = "fc2"
op = "linear"
weight = "w2"
"""
CNN_SPEC = """input_shape = [1, 6, 6]
[[layers]]
op = "conv2d"
weight = "c.weight"
bias = "c.bias"
stride = 1
padding = [1, 1]
[[layers]]
op = "batchnorm2d"
weight = "bn.weight"
bias = "bn.bias"
running_mean = "bn.running_mean"
running_var = "bn.running_var"
eps = 1e-5
[[layers]]
op = "relu"
[[layers]]
op = "maxpool2d"
kernel = 2
[[layers]]
op = "flatten"
[[layers]]
op = "linear"
weight = "fc.weight"
"""
rng = np.random.default_rng(0)
f = lambda *s: rng.standard_normal(s).astype(np.float32)


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


mlp = save({"w1": f(3, 4), "b1": f(3), "w2": f(2, 3)}, {"qscope.spec": MLP_SPEC})
cnn = save({"c.weight": f(2, 1, 3, 3), "c.bias": f(2), "bn.weight": f(2), "bn.bias": f(2),
            "bn.running_mean": f(2), "bn.running_var": np.abs(f(2)) + 0.1, "fc.weight": f(3, 18)},
           {"qscope.spec": CNN_SPEC})
seq = save({"0.weight": f(3, 4), "0.bias": f(3), "2.weight": f(2, 3), "2.bias": f(2)})
half = save({"w1": f(3, 4).astype(np.float16), "b1": f(3), "w2": f(2, 3)}, {"qscope.spec": MLP_SPEC})
put("model_safetensors", "mlp", b"\0" + mlp)
put("model_safetensors", "cnn", b"\0" + cnn)
put("model_safetensors", "sequential", b"\0" + seq)
put("model_safetensors", "f16", b"\0" + half)
put("model_safetensors", "external-spec", b"\1" + MLP_SPEC.encode() + b"\0" + save({"w1": f(3, 4), "b1": f(3), "w2": f(2, 3)}))
put("spec_toml", "mlp", MLP_SPEC)
put("spec_toml", "cnn", CNN_SPEC)
put("spec_toml", "bundled-cnn", """name = "mnist-cnn"
input_shape = [1, 28, 28]
input_mean = [0.1307]
input_std = [0.3081]
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
op = "flatten"
""")
put("config_toml", "example", open(os.path.join(HERE, "..", "config.example.toml")).read())
put("config_toml", "small", 'weight_bits = 4\nact_strategy = "kl"\ngranularity = "group:8"\n[layers.fc1]\nact_range = [0.0, 2.5]\nweight_clip = 0.9\n[layers.input]\nact_bits = 6\n')
x = rng.integers(0, 256, (4, 4), dtype=np.uint8)
labels = np.array([0, 1, 2, 1], dtype=np.int64)
put("dataset_safetensors", "u8", save({"inputs": x, "labels": labels}))
put("dataset_safetensors", "f32", save({"images": x.astype(np.float32) / 255, "labels": labels.astype(np.int32)}))
buf = io.BytesIO(); np.savez(buf, inputs=x, labels=labels); put("dataset_npz", "stored", buf.getvalue())
buf = io.BytesIO(); np.savez_compressed(buf, images=x.astype(np.float32), labels=labels.astype(np.uint8)); put("dataset_npz", "deflated", buf.getvalue())

with tempfile.TemporaryDirectory() as t:
    m, d = os.path.join(t, "m.safetensors"), os.path.join(t, "d.safetensors")
    open(m, "wb").write(mlp)
    open(d, "wb").write(save({"inputs": x, "labels": labels % 2}))
    common = ["--model", m, "--calib", d, "--eval", d]
    for name, extra in [("int8", []), ("int4-group", ["--weight-bits", "4", "--granularity", "group:2"]),
                        ("float-fc2", ["--keep-float", "fc2", "--act-scheme", "symmetric"])]:
        out = os.path.join(t, name + ".safetensors")
        subprocess.run([QSCOPE, "export", "--out", out, *common, *extra], check=True, capture_output=True)
        put("quantized_model", name, open(out, "rb").read())
    bundled = ["--granularity", "per-tensor", "--calib-samples", "20"]
    for ext in ["json", "toml"]:
        out = os.path.join(t, "p." + ext)
        subprocess.run([QSCOPE, "export", "--out", out, *bundled], check=True, capture_output=True)
        put("params_file", "mlp-" + ext, open(out, "rb").read())
