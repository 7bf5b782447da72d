#!/usr/bin/env python3
"""Already-quantised models: Kestrel running ONNX Runtime's own QDQ files against ONNX Runtime.

For each shared model: ONNX Runtime's documented static flow (quant_pre_process, then
quantize_static, QDQ, per-channel int8 weights, S8S8 and U8S8 activations) calibrated on
--calib-count calibration images; `kestrel compile` of that file with no --calib (the
model's own scales); then both run the same preprocessed tensors of every dev image
(decoded with Pillow, as MODELS.md's accuracies are) and the script reports top-1 agreement
between them, the largest logit difference, and each one's top-1 accuracy. Prints the
markdown table of docs/accuracy.md.

    python3 -m pip install onnxruntime onnx numpy pillow
    cargo build --profile host -p kestrel-tools
    python3 scripts/qdq_accuracy.py [--models resnet20_cifar10 ...] [--limit 500]
"""

import argparse
import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from PIL import Image

from peers import ort_quantize

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
KESTREL = REPO / "target" / "host" / "kestrel"
WORK = REPO / "target" / "qdq"
logging.getLogger().setLevel(logging.ERROR)


def preprocessing(model):
    meta = {p.key: p.value for p in model.metadata_props}
    dims = model.graph.input[0].type.tensor_type.shape.dim
    floats = lambda key, default: [float(v) for v in meta[key].split(",")] if key in meta else default
    return {
        "size": (dims[2].dim_value, dims[3].dim_value),
        "scale": float(meta.get("preprocess.scale", 1 / 255)),
        "mean": np.array(floats("preprocess.mean", [0.485, 0.456, 0.406]), dtype=np.float32),
        "std": np.array(floats("preprocess.std", [0.229, 0.224, 0.225]), dtype=np.float32),
        "name": model.graph.input[0].name,
        "labels": meta["labels"].split(","),
    }


def load(pre, path):
    img = Image.open(path).convert("RGB")
    if img.size != pre["size"][::-1]:
        img = img.resize(pre["size"][::-1], Image.BILINEAR)
    x = np.asarray(img, dtype=np.float32) * pre["scale"]
    return ((x - pre["mean"]) / pre["std"]).transpose(2, 0, 1).astype(np.float32)


def images(folder, pre, limit=None):
    """(tensors, class indices) in path order, spread over the classes when limited."""
    files = sorted(p for p in (SHARED / "data" / "cifar10" / folder).rglob("*.jpg"))
    if limit and limit < len(files):
        files = [files[i * len(files) // limit] for i in range(limit)]
    labels = [pre["labels"].index(f.parent.name) for f in files]
    return np.stack([load(pre, f) for f in files]), np.array(labels)


def ort_logits(path, pre, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {pre["name"]: xi[None]})[0] for xi in x])


def kestrel_logits(kes, tensors):
    out = subprocess.run([str(KESTREL), "run", str(kes), "--tensors", str(tensors), "--json", "--top", "1"],
                         check=True, capture_output=True, text=True).stdout
    return np.array([r["logits"] for r in json.loads(out)], dtype=np.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="*", default=["resnet20_cifar10", "resnet56_cifar10", "resnet8_tiny_cifar10"])
    ap.add_argument("--calib-count", type=int, default=200)
    ap.add_argument("--limit", type=int, default=None, help="dev images (default: all 5000)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        src = SHARED / "models" / f"{name}.onnx"
        pre = preprocessing(onnx.load(str(src)))
        calib, _ = images("calib", pre, args.calib_count)
        dev, truth = images("dev", pre, args.limit)
        tensors = WORK / f"{name}_dev.npy"
        np.save(tensors, dev)
        for activations, tag in [("int8", "S8S8"), ("uint8", "U8S8")]:
            qdq = WORK / f"{name}_qdq_{tag.lower()}.onnx"
            ort_quantize(src, qdq, pre, [x[None] for x in calib], activations)
            kes = qdq.with_suffix(".kes")
            subprocess.run([str(KESTREL), "compile", str(qdq), "--target", "x86-64", "-o", str(kes)],
                           check=True, capture_output=True)
            ours = kestrel_logits(kes, tensors)
            theirs = ort_logits(qdq, pre, dev)
            # ORT's logits are int8 at its output scale, so its top class can be a tie (and
            # argmax takes the first): counted as agreeing when Kestrel picks one of them.
            ort_best = theirs.max(1)
            ours_in_ort_top = theirs[np.arange(len(theirs)), ours.argmax(1)] >= ort_best - 1e-6
            row = {
                "model": name,
                "activations": tag,
                "images": len(dev),
                "agreement": float(np.mean(ours.argmax(1) == theirs.argmax(1))),
                "agreement_ties": float(np.mean(ours_in_ort_top)),
                "ort_ties": float(np.mean((theirs >= ort_best[:, None] - 1e-6).sum(1) > 1)),
                "max_logit_diff": float(np.abs(ours - theirs).max()),
                "kestrel_top1": float(np.mean(ours.argmax(1) == truth)),
                "ort_top1": float(np.mean(theirs.argmax(1) == truth)),
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    print("\n| model | activations | images | top-1 agreement Kestrel vs ORT | same, a tie of ORT's counted as agreeing (ORT images with a tied top) | max logit diff | Kestrel top-1 | ORT top-1 | difference (points) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['activations']} | {r['images']} | {100 * r['agreement']:.2f}% | "
              f"{100 * r['agreement_ties']:.2f}% ({100 * r['ort_ties']:.2f}%) | "
              f"{r['max_logit_diff']:.3f} | {100 * r['kestrel_top1']:.2f}% | {100 * r['ort_top1']:.2f}% | "
              f"{100 * (r['kestrel_top1'] - r['ort_top1']):+.2f} |")


if __name__ == "__main__":
    main()
