"""Training images/s per model: the real pipeline (cache + batched augmentation) against batches
already on the device; K trainings packed on one device; cold (cache-building) vs warm epochs and
decode-every-time epochs.

    python bench/throughput.py [--models small_cnn@224 small_cnn_bn@224 efficientnet_b0@224 …]
                               [--packed 1 2 4] [--packed-models …] [--window 20]
                               [--images 256] [--batch 32] [--steps 8] [--rounds 3]
                               [--quick] [--out FILE.json]

pipeline efficiency = pipeline images/s ÷ in-memory images/s (1.0: the loader costs nothing), both
timed with the trainer's own `train_step`, in alternating rounds after warming both up. The loader
is also timed alone (s per batch) and as a share of a training step. Packed rows: K spawned
processes train the same model at once for `--window` seconds; their images/s are summed.
The epoch comparison runs on real photos from ../shared/datasets when present and always on
1920×1080 JPEGs the bench writes.
"""

import argparse
import multiprocessing as mp
import os
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
from carbrand_search.core.config import DataConfig
from carbrand_search.data.augment import Augment
from carbrand_search.data.cache import load_or_build
from carbrand_search.data.demo import DemoSpec, write_demo
from carbrand_search.data.imagefolder import load_image, scan, square_array
from carbrand_search.data.loader import DeviceSplit
from carbrand_search.training.fit import train_step
from carbrand_search.training.precision import Precision

CACHE_PX = 256  # side of the cached demo images the models crop from
STEPS_PER_CHECK = 5  # packed runs: training steps between looks at the clock
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "stanford-cars-brands-128"


def build(name: str, classes: int) -> tuple[torch.nn.Module, Augment]:
    bn = name.endswith("_bn")
    base = name.removesuffix("_bn")
    params = {"batch_norm": bn} if base == "small_cnn" else {"pretrained": False}
    entry = models.entry(base)
    return models.create(base, classes, **params), Augment(DataConfig(), *entry.normalization())


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(model, optimizer, make, steps: int, device) -> float:
    """Seconds for `steps` training steps (the trainer's own step) on batches from `make()`."""
    criterion = torch.nn.CrossEntropyLoss()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        x, y = make()
        train_step(model, criterion, optimizer, x, y, Precision.for_device(device, True, True))
    sync(device)
    return time.perf_counter() - start


def setup(spec: str, split: DeviceSplit, classes: int, batch: int, device):
    """Model, optimizer and an endless stream of augmented batches for `name@size`."""
    name, size = spec.split("@")
    model, augment = build(name, classes)
    augment = Augment(
        DataConfig(cache_size=split.images.shape[1], image_size=int(size)),
        augment.mean,
        augment.std,
    )
    Precision.for_device(device, True, True).prepare(model.to(device).train())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator(device=device).manual_seed(0)
    order = torch.Generator().manual_seed(0)

    def stream():
        while True:
            for images, labels in split.batches(batch, order):
                if labels.shape[0] == batch:
                    yield augment.train_batch(images, g), labels

    return model, optimizer, stream()


def model_row(
    spec: str, split: DeviceSplit, classes: int, batch: int, steps: int, rounds: int, device
) -> dict:
    """Pipeline vs in-memory images/s, timed in alternating rounds after a warm-up of both, so
    neither side gets the other's warm-up (allocator, kernel caches) for free."""
    model, optimizer, stream = setup(spec, split, classes, batch, device)
    fixed = next(stream)

    def from_pipeline():
        return next(stream)

    def in_memory():
        return fixed

    for make in (in_memory, from_pipeline):
        timed_steps(model, optimizer, make, 3, device)
    pipeline = memory = 0.0
    for _ in range(rounds):
        memory += timed_steps(model, optimizer, in_memory, steps, device)
        pipeline += timed_steps(model, optimizer, from_pipeline, steps, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        next(stream)
    sync(device)
    loader = (time.perf_counter() - start) / steps
    images = batch * steps * rounds
    return {
        "model": spec,
        "pipeline_img_s": round(images / pipeline, 1),
        "in_memory_img_s": round(images / memory, 1),
        "pipeline_efficiency": round(memory / pipeline, 3),
        "step_s": round(memory / (steps * rounds), 4),
        "loader_s_per_batch": round(loader, 4),
        "loader_share_of_step": round(loader * steps * rounds / memory, 3),
    }


def packed_worker(spec, demo, cache, classes, batch, window, threads, barrier, results) -> None:
    """One of K concurrent trainings on the same device: steps done in a shared time window."""
    torch.set_num_threads(threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cached = load_or_build(scan(demo).splits["train"], CACHE_PX, "crop", cache, skip_bad=False)
    split = DeviceSplit.from_arrays(cached.images, cached.labels, device)
    model, optimizer, stream = setup(spec, split, classes, batch, device)
    timed_steps(model, optimizer, lambda: next(stream), 3, device)
    barrier.wait()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < window:
        # Several steps per clock check: timed_steps waits for the GPU at its end.
        timed_steps(model, optimizer, lambda: next(stream), STEPS_PER_CHECK, device)
        done += STEPS_PER_CHECK
    results.put(done * batch / (time.perf_counter() - start))


def packed_row(
    spec: str, demo: Path, cache: Path, classes: int, batch: int, k: int, window: float
) -> dict:
    """Images/s summed over K processes training `spec` at once (trials packed on one device)."""
    context = mp.get_context("spawn")
    barrier, results = context.Barrier(k), context.Queue()
    threads = max(1, (os.cpu_count() or 1) // k) if not torch.cuda.is_available() else 1
    args = (spec, demo, cache, classes, batch, window, threads, barrier, results)
    processes = [context.Process(target=packed_worker, args=args) for _ in range(k)]
    for process in processes:
        process.start()
    rates = [results.get(timeout=600) for _ in processes]
    for process in processes:
        process.join()
    return {
        "model": spec,
        "processes": k,
        "summed_img_s": round(sum(rates), 1),
        "per_process_img_s": [round(r, 1) for r in rates],
    }


def epoch_rows(root: Path, size: int, crop: int, batch: int, rounds: int, device) -> dict:
    """Cold epoch (decoding into the cache) vs warm epochs (cache loaded once, as a worker does)
    vs decode-every-time epochs (PIL decode + resize per image, per epoch), the last two
    alternated for `rounds` rounds."""
    split = scan(root).splits["train"]
    model, augment = build("small_cnn", len(scan(root).classes))
    augment = Augment(DataConfig(cache_size=size, image_size=crop), augment.mean, augment.std)
    Precision.for_device(device, True, True).prepare(model.to(device))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    g = torch.Generator(device=device).manual_seed(0)
    order = torch.Generator().manual_seed(0)

    def epoch(batches) -> float:
        start = time.perf_counter()
        for images, labels in batches:
            x = augment.train_batch(images.to(device), g)
            precision = Precision.for_device(device, True, True)
            train_step(model, criterion, optimizer, x, labels.to(device), precision)
        sync(device)
        return time.perf_counter() - start

    def decoded_batches():
        shuffled = torch.randperm(len(split.files), generator=order).tolist()
        for i in range(0, len(shuffled), batch):
            chosen = shuffled[i : i + batch]
            arrays = [square_array(load_image(split.files[j]), size, "crop") for j in chosen]
            yield (
                torch.from_numpy(np.stack(arrays)),
                torch.tensor([split.labels[j] for j in chosen]),
            )

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cached = load_or_build(split, size, "crop", Path(tmp), skip_bad=True)
        data = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        cold = time.perf_counter() - start + epoch(data.batches(batch, order))
        start = time.perf_counter()
        cached = load_or_build(split, size, "crop", Path(tmp), skip_bad=True)
        data = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        load = time.perf_counter() - start
        warm = decode = 0.0
        for _ in range(rounds):
            warm += epoch(data.batches(batch, order))
            decode += epoch(decoded_batches())
    return {
        "images": len(split.files),
        "cold_epoch_s": round(cold, 3),
        "cache_load_s": round(load, 3),
        "warm_epoch_s": round(warm / rounds, 3),
        "decode_every_time_epoch_s": round(decode / rounds, 3),
        "warm_vs_decode_ratio": round(warm / decode, 3),
    }


def real_photo_tree(root: Path, per_class: int, classes: int) -> Path:
    """A tree of the shared dataset's real photos (its biggest makes); val/test hold one each."""
    folders = [d for d in PHOTOS.iterdir() if d.is_dir()]
    makes = sorted(folders, key=lambda d: -len(list(d.iterdir())))[:classes]
    for make in makes:
        for split in ("train", "val", "test"):
            (root / split / make.name).mkdir(parents=True)
        for photo in sorted(make.iterdir())[:per_class]:
            shutil.copy(photo, root / "train" / make.name / photo.name)
        for split in ("val", "test"):
            shutil.copy(next(make.iterdir()), root / split / make.name / "x.jpg")
    return root


def large_jpeg_tree(root: Path, per_class: int, classes: int) -> Path:
    """1920×1080 JPEGs of smooth random colour fields (they compress like photos, unlike noise)."""
    rng = np.random.default_rng(0)
    for c in range(classes):
        for split, n in (("train", per_class), ("val", 1), ("test", 1)):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                small = Image.fromarray(rng.integers(0, 256, (34, 60, 3), dtype=np.uint8))
                photo = small.resize((1920, 1080), Image.Resampling.BICUBIC)
                photo.save(root / split / f"c{c}" / f"{i}.jpg", quality=90)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="+",
        default=["small_cnn@224", "small_cnn@128", "small_cnn_bn@224", "efficientnet_b0@224"],
    )
    parser.add_argument("--images", type=int, default=256, help="demo images in the cached split")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds")
    parser.add_argument(
        "--packed", type=int, nargs="+", default=[1, 2], help="concurrent trainings K"
    )
    parser.add_argument(
        "--packed-models", nargs="+", default=["small_cnn@224", "efficientnet_b0@224"]
    )
    parser.add_argument("--window", type=float, default=20.0, help="seconds per packed run")
    parser.add_argument(
        "--photos", type=int, default=64, help="photos per class for the epoch test"
    )
    parser.add_argument(
        "--large", type=int, default=32, help="written 1920×1080 JPEGs per class, epoch test"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/throughput.json"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.packed_models, args.packed = ["small_cnn@64"], ["small_cnn@64"], [1, 2]
        args.images, args.batch, args.steps, args.rounds, args.window = 32, 8, 2, 1, 1.0
        args.photos, args.large = 8, 2
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    classes = 8
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = max(10, args.images // classes * 10 // 7)
        write_demo(root / "demo", DemoSpec(classes=classes, per_class=per_class, size=CACHE_PX))
        cached = load_or_build(
            scan(root / "demo").splits["train"], CACHE_PX, "crop", root / "cache", skip_bad=False
        )
        split = DeviceSplit.from_arrays(cached.images, cached.labels, device)
        print(
            f"{'model':>20} {'pipeline img/s':>15} {'in-memory img/s':>16} {'efficiency':>11} "
            f"{'step s':>8} {'loader s':>9}",
            flush=True,
        )
        rows = []
        for spec in args.models:
            r = model_row(spec, split, classes, args.batch, args.steps, args.rounds, device)
            rows.append(r)
            print(
                f"{r['model']:>20} {r['pipeline_img_s']:>15} {r['in_memory_img_s']:>16} "
                f"{r['pipeline_efficiency']:>11} {r['step_s']:>8} {r['loader_s_per_batch']:>9}",
                flush=True,
            )
        del split  # the packed processes load their own copies
        print(f"{'packed model':>20} {'K':>3} {'summed img/s':>13}  per process", flush=True)
        packed = []
        for spec in args.packed_models:
            for k in args.packed:
                r = packed_row(
                    spec, root / "demo", root / "cache", classes, args.batch, k, args.window
                )
                packed.append(r)
                print(
                    f"{spec:>20} {k:>3} {r['summed_img_s']:>13}  {r['per_process_img_s']}",
                    flush=True,
                )
        trees = {}
        if PHOTOS.is_dir():
            source = f"real photos ({PHOTOS.name}, 4 makes × {args.photos})"
            trees[source] = real_photo_tree(root / "photos", args.photos, 4)
        source = f"written 1920×1080 JPEGs (4 classes × {args.large})"
        trees[source] = large_jpeg_tree(root / "large", args.large, 4)
        size, crop = (72, 64) if args.quick else (146, 128)
        epochs = []
        for source, tree in trees.items():
            e = epoch_rows(tree, size, crop, args.batch, args.rounds, device) | {"source": source}
            epochs.append(e)
            print(
                f"epochs on {source}: cold {e['cold_epoch_s']}s (cache load when warm "
                f"{e['cache_load_s']}s), warm {e['warm_epoch_s']}s, decode-every-time "
                f"{e['decode_every_time_epoch_s']}s (warm/decode {e['warm_vs_decode_ratio']})",
                flush=True,
            )
    write_json(
        args.out,
        {
            "machine": machine(),
            "device": str(device),
            "date": str(date.today()),
            "rows": rows,
            "packed": packed,
            "epochs": epochs,
            "args": vars(args) | {"out": str(args.out)},
        },
    )


if __name__ == "__main__":
    main()
