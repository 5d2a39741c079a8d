"""ImageFolder discovery and validation: `train/ val/ test/`, one folder per brand."""

import hashlib
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from carbrand_search.core.errors import UserError, first_line

T = TypeVar("T")
SPLITS = ("train", "val", "test")
FITS = ("crop", "pad", "stretch")


class BadImage(Exception):
    """A file that does not decode as an image."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: not a readable image ({reason})")
        self.path = path


@dataclass(frozen=True)
class Split:
    """One split's image files and their class indices."""

    name: str
    root: Path
    files: tuple[Path, ...]
    labels: tuple[int, ...]


@dataclass(frozen=True)
class ImageTree:
    """A validated dataset layout: the brands and each split's files."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, Split]
    clutter: tuple[Path, ...] = ()  # files skipped as not images (see `is_clutter`)

    def clutter_line(self) -> str | None:
        """One line on the skipped clutter, or None when there was none."""
        if not self.clutter:
            return None
        names = sorted({p.name for p in self.clutter}, key=str.lower)
        shown = ", ".join(names[:5]) + (", …" if len(names) > 5 else "")
        return f"skipped {len(self.clutter)} file(s) that are not images ({shown})"


IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
# Folders that operating systems and file managers leave among photos.
CLUTTER_DIRS = frozenset({"__macosx", "@eadir", "$recycle.bin", "system volume information"})


def is_clutter(path: Path) -> bool:
    """A file nobody meant as a training image: hidden (.DS_Store, AppleDouble ._*) or without
    an image extension (Thumbs.db, desktop.ini, README.txt, labels.csv)."""
    return path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES


def is_clutter_dir(path: Path) -> bool:
    """A folder of metadata, not of photos: hidden, macOS' __MACOSX, Synology's @eaDir, …"""
    return path.name.startswith(".") or path.name.lower() in CLUTTER_DIRS


def _all_files(folder: Path) -> list[Path]:
    return [Path(p) / f for p, _, names in os.walk(folder, followlinks=False) for f in names]


def class_files(class_dir: Path) -> tuple[list[Path], list[Path]]:
    """(images, clutter) below `class_dir`; clutter folders count as clutter, file by file."""
    files: list[Path] = []
    clutter: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=False):
        here = Path(dirpath)
        skipped = [d for d in dirnames if is_clutter_dir(here / d)]
        for d in skipped:
            clutter += _all_files(here / d)
        dirnames[:] = sorted(set(dirnames) - set(skipped))
        for f in sorted(filenames):
            (clutter if is_clutter(here / f) else files).append(here / f)
    return files, clutter


def scan(root: Path, splits: tuple[str, ...] = SPLITS) -> ImageTree:
    """Find each split's class folders and files; structural problems raise UserError."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"data folder {root} does not exist")
    per_split: dict[str, dict[str, list[Path]]] = {}
    clutter: list[Path] = []
    for name in splits:
        split_dir = root / name
        if not split_dir.is_dir():
            raise UserError(
                f"{root}: missing split folder '{name}/' (expected {', '.join(splits)})"
            )
        class_dirs = sorted(d for d in split_dir.iterdir() if d.is_dir() and not is_clutter_dir(d))
        for entry in split_dir.iterdir():  # beside the class folders: files, clutter folders
            if not entry.is_dir():
                clutter.append(entry)
            elif is_clutter_dir(entry):
                clutter += _all_files(entry)
        per_split[name] = {}
        for d in class_dirs:
            per_split[name][d.name], skipped = class_files(d)
            clutter += skipped
        for cls, files in per_split[name].items():
            if not files:
                raise UserError(f"{split_dir / cls}: empty class folder (no image files)")
    classes = sorted(per_split[splits[0]])
    for name in splits[1:]:
        missing = sorted(set(classes) ^ set(per_split[name]))
        if missing:
            cls = missing[0]
            where = splits[0] if cls in per_split[splits[0]] else name
            other = name if where == splits[0] else splits[0]
            raise UserError(
                f"{root}: class '{cls}' is in {where}/ but not in {other}/ "
                "(every split needs the same class folders)"
            )
    if len(classes) < 2:
        raise UserError(f"{root}: found {len(classes)} class folder(s); need at least 2")
    index = {c: i for i, c in enumerate(classes)}
    return ImageTree(
        root=root,
        clutter=tuple(clutter),
        classes=tuple(classes),
        splits={
            name: Split(
                name=name,
                root=root / name,
                files=tuple(f for c in classes for f in per_split[name][c]),
                labels=tuple(index[c] for c in classes for _ in per_split[name][c]),
            )
            for name in splits
        },
    )


MAX_FILE_BYTES = 64 << 20  # no photo of a car needs more
MAX_PIXELS = 40_000_000  # decoded RGB 120 MB; a tiny PNG can claim 180 megapixels


def check_file(path: Path) -> int:
    """The byte size of `path` if it is a regular file of sane size, else BadImage: a FIFO
    would block a reader forever, a link to /dev/zero would never end."""
    try:
        st = path.stat()
    except OSError as e:  # dangling or looping symlink, vanished file
        raise BadImage(path, e.strerror or type(e).__name__) from e
    if not stat.S_ISREG(st.st_mode):
        raise BadImage(path, "not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise BadImage(path, f"{st.st_size >> 20} MB, more than {MAX_FILE_BYTES >> 20} MB")
    return st.st_size


# The decoders Pillow may use, whatever a file's name says: an EPS or PDF renamed .jpg would
# otherwise go to Ghostscript, which hangs or fails outside Python.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")


def load_image(path: Path) -> Image.Image:
    """Decode `path` fully to RGB, or raise BadImage."""
    check_file(path)
    try:
        with Image.open(path, formats=IMAGE_FORMATS) as img:
            if img.width * img.height > MAX_PIXELS:  # read from the header, before decoding
                raise BadImage(
                    path, f"{img.width}×{img.height} is more than {MAX_PIXELS // 10**6} megapixels"
                )
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise BadImage(path, f"not a {', '.join(IMAGE_FORMATS)} image") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as e:
        raise BadImage(path, first_line(e)) from e


def to_square(img: Image.Image, size: int, fit: str) -> Image.Image:
    """Resize to `size`×`size`: centre crop of the short side, letterbox pad, or stretch."""
    resample = Image.Resampling.BICUBIC
    if fit == "crop":
        return ImageOps.fit(img, (size, size), resample)
    if fit == "pad":
        return ImageOps.pad(img, (size, size), resample)
    if fit == "stretch":
        return img.resize((size, size), resample)
    raise ValueError(f"data.fit must be one of {FITS}, got {fit!r}")


def square_array(img: Image.Image, size: int, fit: str) -> np.ndarray:
    """`to_square` as a (size, size, 3) uint8 array: exactly what the cache stores."""
    return np.asarray(to_square(img, size, fit), dtype=np.uint8)


DECODE_CHUNK = 256  # images decoded ahead of their consumer: bounds the memory of a scan


def decode_each(
    files: tuple[Path, ...],
    work: Callable[[Image.Image], T],
    on_done: Callable[[int], None] | None = None,
) -> Iterator[T | BadImage]:
    """Decode every file in parallel threads and apply `work`, yielding results in file order;
    a BadImage stands in for a bad file. At most DECODE_CHUNK results are held at a time."""

    def one(path: Path) -> T | BadImage:
        try:
            return work(load_image(path))
        except BadImage as e:
            return e

    done = 0
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for start in range(0, len(files), DECODE_CHUNK):
            for result in pool.map(one, files[start : start + DECODE_CHUNK]):
                done += 1
                if on_done:
                    on_done(done)
                yield result


def bad_files_error(bad: list[BadImage], skip_hint: bool = True) -> UserError:
    """The one-line error for bad images: the first file named, the rest counted."""
    more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
    hint = "; pass --skip-bad to skip and count them" if skip_hint else ""
    return UserError(f"{bad[0]}{more}{hint}")


@dataclass
class SplitSummary:
    """What `data check` reports for one split."""

    per_class: Counter[str] = field(default_factory=Counter)
    bad: list[BadImage] = field(default_factory=list)
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None

    @property
    def total(self) -> int:
        return sum(self.per_class.values())

    @property
    def balance(self) -> float:
        """Smallest class over largest class (1.0 = balanced)."""
        counts: list[int] = list(self.per_class.values())
        return min(counts) / max(counts) if counts else 0.0


@dataclass(frozen=True)
class Leak:
    """`count` images of split `later` have the same bytes as images of split `earlier`."""

    earlier: str
    later: str
    count: int


def cross_split_duplicates(tree: ImageTree) -> list[Leak]:
    """Files whose exact bytes also appear in an earlier split: evaluation would see training
    images."""
    first_split: dict[str, str] = {}
    leaks: dict[tuple[str, str], int] = {}
    for split in tree.splits.values():
        for path in split.files:
            try:
                check_file(path)
            except BadImage:
                continue  # reported as a bad file by the checks that decode
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            earlier = first_split.setdefault(digest, split.name)
            if earlier != split.name:
                leaks[earlier, split.name] = leaks.get((earlier, split.name), 0) + 1
    return [Leak(earlier, later, count) for (earlier, later), count in leaks.items()]


def inspect(tree: ImageTree, skip_bad: bool) -> dict[str, SplitSummary]:
    """Decode every image; per split: counts per class, size range, bad files."""
    summaries: dict[str, SplitSummary] = {}
    for split in tree.splits.values():
        summary = SplitSummary()
        sizes = decode_each(split.files, lambda img: img.size)
        for size, label in zip(sizes, split.labels, strict=True):
            if isinstance(size, BadImage):
                summary.bad.append(size)
                continue
            assert isinstance(size, tuple)
            summary.per_class[tree.classes[label]] += 1
            summary.min_size = min(summary.min_size or size, size, key=lambda s: s[0] * s[1])
            summary.max_size = max(summary.max_size or size, size, key=lambda s: s[0] * s[1])
        if summary.bad and not skip_bad:
            raise bad_files_error(summary.bad)
        empty = [c for c in tree.classes if summary.per_class[c] == 0]
        if empty:
            raise UserError(
                f"{split.root / empty[0]}: no readable images left after skipping bad files"
            )
        summaries[split.name] = summary
    return summaries


@dataclass(frozen=True)
class DatasetCheck:
    """What `data check` found: the tree, per-split summaries, leakage between splits."""

    tree: ImageTree
    summaries: dict[str, SplitSummary]
    leaks: list[Leak]


def check_dataset(folder: Path, skip_bad: bool) -> DatasetCheck:
    """Validate a dataset: its layout, every image decoded, duplicates across splits."""
    tree = scan(folder)
    return DatasetCheck(tree, inspect(tree, skip_bad), cross_split_duplicates(tree))
