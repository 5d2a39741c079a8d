"""Training images/s per model: the real pipeline (cache + batched augmentation) against batches
already on the device, plus cold (cache-building) vs warm epochs and decode-every-time epochs.

    python bench/throughput.py [--models small_cnn@224 small_cnn_bn@224 efficientnet_b0@224 …]
                               [--images 256] [--batch 32] [--quick] [--out FILE.json]

pipeline efficiency = pipeline images/s ÷ in-memory images/s (1.0: the loader costs nothing).
The epoch comparison uses real photos from ../shared/datasets when present, else full-size JPEGs
written by the bench.
"""

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch
from common import machine, write_json
from PIL import Image

from carbrand_search import models
from carbrand_search.augment import Augment
from carbrand_search.cache import load_or_build
from carbrand_search.data import load_image, scan, square_array
from carbrand_search.demo import DemoSpec, write_demo
from carbrand_search.loader import DeviceSplit
from carbrand_search.spec import DataConfig

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "stanford-cars-brands-128"


def build(name: str, classes: int) -> tuple[torch.nn.Module, Augment]:
    bn = name.endswith("_bn")
    base = name.removesuffix("_bn")
    params = {"batch_norm": bn} if base == "small_cnn" else {"pretrained": False}
    entry = models.entry(base)
    return models.create(base, classes, **params), Augment(DataConfig(), entry.mean, entry.std)


def steps_per_s(model, optimizer, batches, device) -> float:
    """Time training steps over `batches` (a list of (x, y) or a callable making them)."""
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    start = None
    for i, make in enumerate(batches):
        if i == 2:  # two warm-up steps
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = make()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    assert start is not None
    return (len(batches) - 2) / (time.perf_counter() - start)


def model_row(spec: str, split: DeviceSplit, classes: int, batch: int, steps: int, device) -> dict:
    name, size = spec.split("@")
    model, augment = build(name, classes)
    augment = Augment(
        DataConfig(cache_size=split.images.shape[1], image_size=int(size)),
        augment.mean,
        augment.std,
    )
    model.to(device)
    if device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    order = torch.Generator().manual_seed(0)

    def from_pipeline():
        batches = split.batches(batch, order)
        while True:
            for images, labels in batches:
                if labels.shape[0] == batch:
                    yield augment.train_batch(images, g), labels
            batches = split.batches(batch, order)

    stream = from_pipeline()
    pipeline = steps_per_s(model, optimizer, [lambda: next(stream)] * (steps + 2), device)
    fixed = next(from_pipeline())
    in_memory = steps_per_s(model, optimizer, [lambda: fixed] * (steps + 2), device)
    return {
        "model": spec,
        "pipeline_img_s": round(pipeline * batch, 1),
        "in_memory_img_s": round(in_memory * batch, 1),
        "pipeline_efficiency": round(pipeline / in_memory, 3),
    }


def epoch_rows(root: Path, size: int, crop: int, batch: int, device) -> dict:
    """Cold epoch (decode into the cache) vs warm epoch (cache) vs decode-every-time epoch."""
    split = scan(root).splits["train"]
    model, augment = build("small_cnn", len(scan(root).classes))
    augment = Augment(DataConfig(cache_size=size, image_size=crop), augment.mean, augment.std)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    g = torch.Generator(device=device).manual_seed(0)

    def train_on(images: torch.Tensor, labels: torch.Tensor) -> None:
        loss = criterion(model(augment.train_batch(images.to(device), g)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def cached_epoch(cache: Path) -> float:
        start = time.perf_counter()
        cached = load_or_build(split, size, "crop", cache, skip_bad=True)
        data = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        for images, labels in data.batches(batch, torch.Generator().manual_seed(0)):
            train_on(images, labels)
        return time.perf_counter() - start

    def decode_every_time_epoch() -> float:
        start = time.perf_counter()
        files, labels = list(split.files), list(split.labels)
        for i in range(0, len(files), batch):
            arrays = [square_array(load_image(f), size, "crop") for f in files[i : i + batch]]
            train_on(torch.from_numpy(np.stack(arrays)), torch.tensor(labels[i : i + batch]))
        return time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        cold = cached_epoch(Path(tmp))
        warm = cached_epoch(Path(tmp))
    decode = decode_every_time_epoch()
    return {
        "images": len(split.files),
        "cold_epoch_s": round(cold, 2),
        "warm_epoch_s": round(warm, 2),
        "decode_every_time_epoch_s": round(decode, 2),
        "warm_vs_decode_ratio": round(warm / decode, 3),
    }


def photo_tree(root: Path, per_class: int, classes: int) -> tuple[Path, str]:
    """A train/ tree of real photos (shared dataset) or of full-size JPEGs written here."""
    if PHOTOS.is_dir():
        folders = [d for d in PHOTOS.iterdir() if d.is_dir()]
        makes = sorted(folders, key=lambda d: -len(list(d.iterdir())))[:classes]
        for make in makes:
            for split in ("train", "val", "test"):
                (root / split / make.name).mkdir(parents=True)
            for photo in sorted(make.iterdir())[:per_class]:
                shutil.copy(photo, root / "train" / make.name / photo.name)
            for split in ("val", "test"):
                shutil.copy(next(make.iterdir()), root / split / make.name / "x.jpg")
        return root, f"real photos ({PHOTOS.name}, {classes} makes × {per_class})"
    rng = np.random.default_rng(0)
    for c in range(classes):
        for split, n in (("train", per_class), ("val", 1), ("test", 1)):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i}.jpg", quality=90)
    return root, f"synthetic 1920×1080 JPEGs ({classes} classes × {per_class})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["small_cnn@224", "small_cnn@128", "small_cnn_bn@224", "efficientnet_b0@224"],
    )
    parser.add_argument("--images", type=int, default=256, help="demo images in the cached split")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per measurement")
    parser.add_argument(
        "--photos", type=int, default=64, help="photos per class for the epoch test"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.images, args.batch, args.steps, args.photos = (
            ["small_cnn@64"],
            32,
            8,
            2,
            8,
        )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classes = 8
        write_demo(
            root / "demo",
            DemoSpec(
                classes=classes, per_class=max(10, args.images // classes * 10 // 7), size=256
            ),
        )
        cached = load_or_build(
            scan(root / "demo").splits["train"], 256, "crop", root / "cache", skip_bad=False
        )
        split = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        rows = [model_row(m, split, classes, args.batch, args.steps, device) for m in args.models]
        tree, source = photo_tree(root / "photos", args.photos, 4)
        epochs = epoch_rows(
            tree, 146 if not args.quick else 72, 128 if not args.quick else 64, args.batch, device
        )
    print(f"{'model':>22} {'pipeline img/s':>15} {'in-memory img/s':>16} {'efficiency':>11}")
    for r in rows:
        print(
            f"{r['model']:>22} {r['pipeline_img_s']:>15} {r['in_memory_img_s']:>16} "
            f"{r['pipeline_efficiency']:>11}"
        )
    print(
        f"epochs on {source}: cold {epochs['cold_epoch_s']}s, warm {epochs['warm_epoch_s']}s, "
        f"decode-every-time {epochs['decode_every_time_epoch_s']}s "
        f"(warm/decode {epochs['warm_vs_decode_ratio']})"
    )
    payload = {
        "machine": machine(),
        "device": str(device),
        "date": str(date.today()),
        "rows": rows,
    }
    write_json(
        args.out,
        payload
        | {"epochs": epochs | {"source": source}, "args": vars(args) | {"out": str(args.out)}},
    )


if __name__ == "__main__":
    main()
