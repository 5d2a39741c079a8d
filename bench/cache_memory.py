"""Peak memory of a cache build: the decoded split against the process's peak RSS.

    python bench/cache_memory.py [--images 3000] [--size 256] [--quick] [--out FILE]

Writes a split of synthetic 640×480 JPEGs, then builds its decode-once cache in a fresh process
and reads that process's peak resident memory over the build. Images are streamed into a
preallocated file, so beyond the mapped file the build holds about one decode chunk
(DECODE_CHUNK images), not the split's whole decoded size. Run it with PYTHONPATH pointing at
another checkout to measure that version's cache.
"""

import argparse
import json
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
from common import machine, write_json
from PIL import Image

# The kernel's peak resident set (VmHWM), reset just before the build (clear_refs 5). It counts
# the pages of the memory-mapped cache file too (the new build writes through a map; both builds
# read the file back for the checksum): those belong to the page cache and are reclaimable, so
# the decoded split's size is the part a build that holds every image in a list adds on top.
CHILD = """
import json, sys
from pathlib import Path
from carbrand_search.data.cache import load_or_build
from carbrand_search.data.imagefolder import scan

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])

split = scan(Path(sys.argv[1])).splits["train"]
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS")
cached = load_or_build(split, int(sys.argv[2]), "crop", Path(sys.argv[3]), skip_bad=False)
print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM"),
                  "decoded_bytes": cached.images.nbytes}))
"""


def write_split(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "val", "test"):
        for cls in ("A", "B"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            count = images // 2 if split == "train" else 1
            for i in range(count):
                noise = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
                Image.fromarray(noise).resize((640, 480)).save(folder / f"{i}.jpg", quality=85)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="tiny settings, for CI")
    parser.add_argument("--out", type=Path, default=Path("bench/results/cache-memory.json"))
    args = parser.parse_args()
    if args.quick:
        args.images, args.size = 40, 64
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_split(root / "data", args.images)
        done = subprocess.run(
            [sys.executable, "-c", CHILD, str(root / "data"), str(args.size), str(root / "c")],
            check=True, capture_output=True, text=True, cwd=tmp,  # cwd: PYTHONPATH picks the code
        )  # fmt: skip
    row = json.loads(done.stdout.strip().splitlines()[-1])
    growth_mb = (row["peak_kb"] - row["before_kb"]) / 1024
    decoded_mb = row["decoded_bytes"] / 2**20
    print(
        f"{args.images} images at {args.size} px: decoded {decoded_mb:.1f} MB, "
        f"peak resident memory {growth_mb:.1f} MB above its level before the build"
    )
    payload = {"machine": machine(), "date": str(date.today()), "images": args.images}
    payload |= {"size": args.size, "decoded_mb": round(decoded_mb, 1)}
    payload |= {
        "peak_rss_growth_mb": round(growth_mb, 1),
        "args": vars(args) | {"out": str(args.out)},
    }
    write_json(args.out, payload)


if __name__ == "__main__":
    main()
