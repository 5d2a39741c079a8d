"""What one device call needs beside the repository, in folders that git ignores and `carry`
names: `.gpu/` (the car-crops split with each photo's long side capped, as WebP, and the Lite0
weights in float16) and `.whl/` (the wheels the lent GPU machine lacks, for its Python 3.12).
A call may carry 64 MiB in all; the crops split as it is (148 MB) and the float32 weights (18 MB)
do not fit, so this shrinks them and says what the bundle weighs.

    python bench/gpu_bundle.py SPLIT WEIGHTS [--long 224] [--quality 80]

SPLIT is `carbrand-search data split …/stanford-cars-brands-crops-224 SPLIT --min-per-class 50`.
A letterboxed photo (`fit = "pad"`) at a square of side S shows its long side at S px, so capping
the long side at 224 loses nothing for caches up to 224 px (the students at 160–192 px); the
teacher's 256 px cache upsamples from 224. The device call that uses it is in bench/RESULTS.md
("GPU: prepared").
"""

import argparse
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
LIMIT = 64 * 2**20  # what one device call may carry
# Missing on the lent machine (bench/gpu.sh), pinned to this venv's versions; grad-cam has no
# wheel on the index and is built here (pure Python).
WHEELS = [
    "optuna==5.1.0", "optuna-dashboard==0.21.0", "bottle==0.13.4", "sqlalchemy==2.1.9",
    "alembic==1.20.1", "mako==1.4.3", "colorlog==6.12.0", "ttach==0.0.3", "timm==1.0.31",
    "typer==0.29.2", "rich==15.0.0", "shellingham==1.5.4", "annotated-doc==0.0.7",
    "pydantic==2.14.4", "pydantic-core==2.50.5", "typing-inspection==0.4.5",
    "annotated-types==0.8.0",
]  # fmt: skip
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64"]


def shrink(path: Path, src: Path, dst: Path, long: int, quality: int) -> int:
    """One photo, long side at most `long` px, as WebP; its size in bytes."""
    out = (dst / path.relative_to(src)).with_suffix(".webp")
    out.parent.mkdir(parents=True, exist_ok=True)
    image = Image.open(path).convert("RGB")
    scale = long / max(image.size)
    if scale < 1:
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
    image.save(out, quality=quality)
    return out.stat().st_size


def half_weights(src: Path, dst: Path) -> int:
    """The weights with float tensors in float16 (loading casts them back to float32)."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(src)
    save_file({k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}, dst)
    return dst.stat().st_size


def wheels(folder: Path) -> None:
    pip = [sys.executable, "-m", "pip"]
    where = ["--no-deps", "-d", str(folder)]
    target = ["--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp"]
    target += [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run([*pip, "download", "-q", *where, *target, *WHEELS], check=True)
    subprocess.run(
        [*pip, "wheel", "-q", "--no-deps", "-w", str(folder), "grad-cam==1.5.7"], check=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("split", type=Path)
    parser.add_argument("weights", type=Path)
    parser.add_argument("--long", type=int, default=224, help="cap on a photo's long side, px")
    parser.add_argument("--quality", type=int, default=80, help="WebP quality")
    args = parser.parse_args()
    bundle, folder = REPO / ".gpu", REPO / ".whl"
    for old in (bundle, folder):
        shutil.rmtree(old, ignore_errors=True)
    photos = sorted(p for p in args.split.rglob("*") if p.is_file() and not p.name.startswith("."))
    one = partial(
        shrink, src=args.split, dst=bundle / "cars-crops", long=args.long, quality=args.quality
    )
    with ProcessPoolExecutor() as pool:
        data = sum(pool.map(one, photos, chunksize=64))
    weights = half_weights(args.weights, bundle / "lite0-fp16.safetensors")
    wheels(folder)
    wheel_bytes = sum(p.stat().st_size for p in folder.glob("*.whl"))
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    repo = sum((REPO / n).stat().st_size for n in tracked.stdout.decode().split("\0") if n)
    total = data + weights + wheel_bytes + repo
    print(
        f"{len(photos)} photos {data / 2**20:.1f} MiB, weights {weights / 2**20:.1f} MiB, wheels "
        f"{wheel_bytes / 2**20:.1f} MiB, repository {repo / 2**20:.1f} MiB: {total / 2**20:.1f} "
        f"of {LIMIT / 2**20:.0f} MiB"
    )
    if total > LIMIT:
        sys.exit(
            f"gpu_bundle: {total / 2**20:.1f} MiB is over a call's {LIMIT / 2**20:.0f} MiB; "
            "lower --long or --quality"
        )


if __name__ == "__main__":
    main()
