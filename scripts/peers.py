#!/usr/bin/env python3
"""Kestrel against its peers on this machine, in one run, side by side.

For each model: Kestrel int8 (`kestrel compile --target x86-64`, `kestrel bench`), tract
float (`kestrel bench MODEL.onnx`, tract in the same process as Kestrel's tools), ONNX
Runtime float, and ONNX Runtime int8 (its own `quantize_static`: QDQ, per-channel
weights, calibrated on the same calibration images). One thread, then all threads for
the peers that have a thread pool. Prints a markdown table with latency ratios.

    python3 -m pip install onnxruntime onnx numpy pillow sympy
    cargo build --profile host -p kestrel-tools
    python3 scripts/peers.py                    # synthetic ResNet-18 224 + the CIFAR ResNets
    python3 scripts/peers.py --models resnet20_cifar10 --iters 20
    python3 scripts/peers.py --models resnet18_synthetic_224 --kernels avx2 avx-vnni   # a row each
    python3 scripts/peers.py --models resnet18_synthetic_224 --stat min   # fastest iterations

ONNX Runtime always runs the best path of this CPU; `--kernels` picks Kestrel's
(`kestrel bench --kernels`), e.g. to time its AVX2 path on an AVX-512 machine.
"""

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
KESTREL = REPO / "target" / "host" / "kestrel"
WORK = REPO / "target" / "peers"
CALIB = SHARED / "data" / "cifar10" / "calib"


# How a run's iteration times, and then its rounds' figures, become one figure (`--stat`).
STATS = {"median": statistics.median, "min": min}


def need(module):
    try:
        return importlib.import_module(module)
    except ImportError:
        sys.exit(f"peers: python module '{module}' is missing: python3 -m pip install onnxruntime onnx numpy pillow sympy")


def run(cmd):
    out = subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True)
    return out.stdout


def kestrel_bench(model, iters, threads=1, kernels=None):
    cmd = [KESTREL, "bench", model, "--iters", iters, "--threads", threads, "--json"]
    return json.loads(run(cmd + (["--kernels", kernels] if kernels else [])))


def model_path(name):
    if name in ("resnet18_synthetic_224", "resnet50_synthetic_224"):
        path = WORK / f"{name}.onnx"
        if not path.exists():
            run([KESTREL, "synth", "--arch", name.split("_")[0], "--calib", CALIB, "-o", path])
        return path
    path = SHARED / "models" / f"{name}.onnx"
    if not path.exists():
        sys.exit(f"peers: {path} is missing (the shared models beside the repository)")
    return path


def preprocessing(onnx_model):
    """The model's preprocessing from its metadata (what Kestrel reads too)."""
    meta = {p.key: p.value for p in onnx_model.metadata_props}
    dims = onnx_model.graph.input[0].type.tensor_type.shape.dim
    size = (dims[2].dim_value, dims[3].dim_value)
    floats = lambda key, default: [float(v) for v in meta[key].split(",")] if key in meta else default
    return {
        "size": size,
        "scale": float(meta.get("preprocess.scale", 1 / 255)),
        "mean": floats("preprocess.mean", [0.485, 0.456, 0.406]),
        "std": floats("preprocess.std", [0.229, 0.224, 0.225]),
        "name": onnx_model.graph.input[0].name,
    }


def calibration_images(pre, count):
    np = need("numpy")
    image = need("PIL.Image")
    files = sorted(p for p in CALIB.rglob("*") if p.suffix.lower() in (".jpg", ".png"))
    step = max(1, len(files) // count)
    out = []
    for f in files[::step][:count]:
        img = image.open(f).convert("RGB").resize(pre["size"][::-1], image.BILINEAR)
        x = np.asarray(img, dtype=np.float32) * pre["scale"]
        x = (x - np.array(pre["mean"], dtype=np.float32)) / np.array(pre["std"], dtype=np.float32)
        out.append(x.transpose(2, 0, 1)[None].astype(np.float32))
    return out


def ort_quantize(src, dst, pre, images, activations="uint8"):
    """ONNX Runtime's recommended path: its pre-processing (shape inference, graph
    optimisation: BatchNorm folded), then static QDQ quantisation, per-channel int8 weights,
    `activations` int8 (S8S8) or uint8 (U8S8). `images` are [1, C, H, W] arrays."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = dst.with_suffix(".pre.onnx")
    quant_pre_process(str(src), str(prepared))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(images)

        def get_next(self):
            x = next(self.items, None)
            return None if x is None else {pre["name"]: x}

    quantize_static(
        str(prepared),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QInt8 if activations == "int8" else QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )


def ort_latency(path, pre, threads, iters, stat="median", warmup=3):
    ort = need("onnxruntime")
    np = need("numpy")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(7).standard_normal((1, 3, *pre["size"]), dtype=np.float32)
    for _ in range(warmup):
        sess.run(None, {pre["name"]: x})
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        sess.run(None, {pre["name"]: x})
        times.append((time.perf_counter() - t) * 1e3)
    return STATS[stat](times)


def peer_row(name, src, pre, kes, qdq, kernels, cores, args):
    """One table row: Kestrel on `kernels` and the peers, alternated round after round (a
    shared machine's speed drifts), each figure the median of its rounds' medians, or with
    `--stat min` the fastest iteration of all rounds."""
    stat = args.stat
    field = f"latency_ms_{stat}"
    runs = {
        "k": lambda: kestrel_bench(kes, args.iters, 1, kernels)[field],
        "oi1": lambda: ort_latency(qdq, pre, 1, args.iters, stat),
        "kn": lambda: kestrel_bench(kes, args.iters, cores, kernels)[field],
        "oin": lambda: ort_latency(qdq, pre, cores, args.iters, stat),
        "of1": lambda: ort_latency(src, pre, 1, args.iters, stat),
        "tract": lambda: kestrel_bench(src, args.iters)[field],
        "ofn": lambda: ort_latency(src, pre, cores, args.iters, stat),
    }
    ran = kestrel_bench(kes, 1, 1, kernels)
    path = f"{ran['kernels']} ({ran['conv_tile']})"
    seen = {key: [] for key in runs}
    for _ in range(args.rounds):
        for key, measure in runs.items():
            seen[key].append(measure())
    m = {key: STATS[stat](v) for key, v in seen.items()}
    k, kn, tract, oi1, of1, oin, ofn = (m[x] for x in ("k", "kn", "tract", "oi1", "of1", "oin", "ofn"))
    return f"| {name} | {path} | {k:.2f} | {oi1:.2f} | {k / oi1:.2f} | {kn:.2f} | {oin:.2f} | {kn / oin:.2f} | {of1:.2f} | {tract:.2f} | {ofn:.2f} |"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=[
        "resnet18_synthetic_224", "resnet20_cifar10", "resnet32_cifar10", "resnet44_cifar10",
        "resnet56_cifar10", "resnet8_tiny_cifar10", "resnet18_cifar10_64px"])
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--kernels", nargs="+", default=[None],
                    choices=["scalar", "avx2", "avx-vnni", "avx512-vnni"],
                    help="Kestrel's kernel paths, a row each (default: the best this CPU runs)")
    ap.add_argument("--calib-count", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds; each figure is the median of its rounds' medians (--stat min: the fastest of all)")
    ap.add_argument("--stat", choices=list(STATS), default="median",
                    help="min: the fastest iteration of all rounds, steadier than medians on a VM whose neighbours load it")
    args = ap.parse_args()
    import logging

    logging.getLogger().setLevel(logging.ERROR)  # ORT's quantiser is chatty
    onnx = need("onnx")
    ort = need("onnxruntime")
    if not KESTREL.exists():
        sys.exit("peers: build the CLI first: cargo build --profile host -p kestrel-tools")
    WORK.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    what = "fastest of" if args.stat == "min" else "medians of"
    print(f"machine: {cores} cores; onnxruntime {ort.__version__}; one run: {args.rounds} interleaved rounds, {what} {args.iters}\n")
    print("| model | Kestrel path | Kestrel int8 1T (ms) | ORT int8 1T | Kestrel / ORT 1T | Kestrel int8 {0}T | ORT int8 {0}T | Kestrel / ORT {0}T | ORT f32 1T | tract f32 1T | ORT f32 {0}T |".format(cores))
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models:
        src = model_path(name)
        pre = preprocessing(onnx.load(str(src)))
        kes = WORK / f"{name}.kes"
        run([KESTREL, "compile", src, "--calib", CALIB, "--calib-count", args.calib_count,
             "--target", "x86-64", "-o", kes])
        qdq = WORK / f"{name}.qdq.onnx"
        if not qdq.exists():
            ort_quantize(src, qdq, pre, calibration_images(pre, args.calib_count))
        for kernels in args.kernels:
            print(peer_row(name, src, pre, kes, qdq, kernels, cores, args))
    print("\ntract has no thread pool of its own: its column is one thread.")


if __name__ == "__main__":
    main()
