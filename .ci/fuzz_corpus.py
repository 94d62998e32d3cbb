#!/usr/bin/env python3
"""Seed corpora for the fuzz targets, from real files of this repository.

  python3 .ci/fuzz_corpus.py

writes small valid inputs into CRATE/fuzz/corpus/TARGET/ (git-ignored):
the sample JPEGs and a few hand-made PNG/PPM images (image_folder), CIFAR-10
and CIFAR-100 records (cifar_records), the shipped model's preprocessing
record and variants (preprocessing_json), two tiny weights files with real
metadata (weights_file) and the presets (config). libFuzzer starts from
them instead of from nothing; `.ci/fuzz` calls this script when python3 is
there."""
import json, struct, os, glob, random, zlib
random.seed(0)
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
CRATE = {"image_folder": "allcnn-data", "cifar_records": "allcnn-data", "preprocessing_json": "allcnn-data",
         "weights_file": "allcnn-models", "config": "allcnn-train"}
def d(t):
    p = os.path.join(ROOT, CRATE[t], "fuzz", "corpus", t); os.makedirs(p, exist_ok=True); return p
# image_folder: real CIFAR jpgs + tiny PNGs/ppm/bmp written by hand
p = d("image_folder")
for i, f in enumerate(sorted(glob.glob(os.path.join(ROOT, "docs/samples/*.jpg")))):
    open(f"{p}/seed-s{i}.jpg", "wb").write(open(f, "rb").read())
def png(w, h, ch):
    ct = {1: 0, 3: 2, 4: 6}[ch]
    raw = b"".join(b"\0" + bytes(random.randrange(256) for _ in range(w * ch)) for _ in range(h))
    def chunk(t, b): return struct.pack(">I", len(b)) + t + b + struct.pack(">I", zlib.crc32(t + b))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, ct, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
for (w, h, ch) in [(4, 4, 3), (8, 8, 1), (3, 5, 4), (32, 32, 3)]:
    open(f"{p}/seed-p{w}x{h}x{ch}.png", "wb").write(png(w, h, ch))
open(f"{p}/a.ppm", "wb").write(b"P6\n2 2\n255\n" + bytes(range(12)))
# cifar_records: CIFAR-10 (1 + 3072) and CIFAR-100 (2 + 3072) style records
p = d("cifar_records")
for n in (1, 2):
    rec = bytes([random.randrange(10)]) + bytes(random.randrange(256) for _ in range(3072))
    open(f"{p}/c10_{n}.bin", "wb").write(rec * n)
rec = bytes([3, 17]) + bytes(random.randrange(256) for _ in range(3072))
open(f"{p}/c100.bin", "wb").write(rec)
# preprocessing_json: the shipped file's record and variants
b = open(os.path.join(ROOT, "allcnn-models/pretrained/all-cnn-c-cifar10/model.safetensors"), "rb").read()
n = struct.unpack("<Q", b[:8])[0]; meta = json.loads(b[8:8 + n])["__metadata__"]
p = d("preprocessing_json")
pre = meta["allcnn.preprocessing"]
open(f"{p}/shipped.json", "w").write(pre)
j = json.loads(pre)
for i, (k, v) in enumerate([("kind", "gcn"), ("kind", "none"), ("rank", 0), ("shape", [1, 4, 4]), ("version", 1)]):
    jj = dict(j); jj[k] = v
    open(f"{p}/v{i}.json", "w").write(json.dumps(jj))
# weights_file: small models with real metadata
p = d("weights_file")
def st(tensors, metadata):
    hdr, off, blob = {"__metadata__": metadata}, 0, b""
    for name, (dtype, shape, data) in tensors.items():
        hdr[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data); blob += data
    h = json.dumps(hdr).encode(); h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob
def f32(n): return struct.pack(f"<{n}f", *[random.uniform(-1, 1) for _ in range(n)])
def f16(n): return struct.pack(f"<{n}e", *[random.uniform(-1, 1) for _ in range(n)])
def model(layers, cin, size, classes, half=False):
    spec = {"name": "tiny", "in_channels": cin, "input_size": size, "layers": layers}
    t, c, i = {}, cin, 0
    for l in layers:
        if l["type"] == "conv":
            i += 1; k = l["kernel"]; o = l["out"]; n = o * c * k * k
            t[f"conv{i}.weight"] = ("F16", [o, c, k, k], f16(n)) if half else ("F32", [o, c, k, k], f32(n))
            t[f"conv{i}.bias"] = ("F32", [o], f32(o)); c = o
    md = {"allcnn.format": "1", "allcnn.model": "tiny", "allcnn.spec": json.dumps(spec),
          "allcnn.classes": str(classes), "allcnn.input_size": str(size),
          "allcnn.class_names": json.dumps([f"c{k}" for k in range(classes)])}
    return st(t, md)
conv = lambda k, o, s=1, pd=0: {"type": "conv", "kernel": k, "out": o, "stride": s, "padding": pd}
open(f"{p}/tiny1.safetensors", "wb").write(model([conv(3, 4, 1, 1), conv(1, 3)], 3, 4, 3))
open(f"{p}/tiny2.safetensors", "wb").write(model([{"type": "dropout", "rate": 0.2}, conv(3, 4, 2, 1), {"type": "max_pool"}, conv(1, 2)], 1, 6, 2, half=True))
# config: the run configs and a minimal one
p = d("config")
for f in glob.glob(os.path.join(ROOT, "allcnn-train/presets/*.toml")) + [os.path.join(ROOT, "docs/small-all-cnn.toml")]:
    open(f"{p}/seed-{os.path.basename(f)}", "w").write(open(f).read())
open(f"{p}/min.toml", "w").write('model = "all-cnn-c"\nepochs = 1\n[data]\npath = "x"\n')
for t in CRATE: print(f"fuzz corpus {CRATE[t]} {t}: {len(os.listdir(d(t)))} files")
