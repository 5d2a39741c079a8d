"""Getting real data in: split a flat brand-folder tree, import Stanford Cars by make, Kaggle."""

import hashlib
import math
import os
import shutil
import socket
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from carbrand_search.core.errors import UserError
from carbrand_search.core.folders import refuse_non_empty
from carbrand_search.data.imagefolder import (
    SPLITS,
    BadImage,
    class_files,
    is_clutter_dir,
    load_image,
)

MULTI_WORD_MAKES = ("AM General", "Aston Martin", "Land Rover", "Rolls-Royce")


@dataclass
class IngestReport:
    """What an ingest command did: images per split per class, how files got there, skips."""

    counts: dict[str, dict[str, int]] = field(default_factory=lambda: {s: {} for s in SPLITS})
    linked: int = 0
    copied: int = 0
    skipped: list[str] = field(default_factory=list)  # "path: why"
    clutter: int = 0  # files skipped as not images (Thumbs.db, .DS_Store, README.txt, …)
    dropped_classes: dict[str, int] = field(default_factory=dict)  # below --min-per-class

    def add(self, split: str, cls: str) -> None:
        self.counts[split][cls] = self.counts[split].get(cls, 0) + 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def prepare_destination(src: Path, dst: Path, force: bool) -> None:
    """DST must be new or empty (or --force); it may not overlap SRC, which is never touched."""
    src, dst = src.resolve(), dst.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise UserError(f"destination {dst} overlaps the source {src}; choose a separate folder")
    refuse_non_empty(dst, "destination", force, writes=SPLITS)
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True, exist_ok=True)


def place(source: Path, target: Path, report: IngestReport) -> None:
    """Hard-link `source` to `target` (no extra disk), or copy where links are impossible."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
        report.linked += 1
    except OSError:  # another file system, or links not allowed
        shutil.copy2(source, target)
        report.copied += 1


def _class_images(src: Path, report: IngestReport) -> dict[str, list[Path]]:
    """Each class folder's images; clutter (see `is_clutter`) is counted in `report`."""
    if not src.is_dir():
        raise UserError(f"source folder {src} does not exist")
    classes = {}
    for d in sorted(src.iterdir()):
        if d.is_dir() and not is_clutter_dir(d):
            classes[d.name], clutter = class_files(d)
            report.clutter += len(clutter)
    if len(classes) < 2:
        raise UserError(f"{src}: found {len(classes)} class folder(s); need at least 2")
    return classes


def _share(n: int, fraction: float) -> int:
    return max(1, round(n * fraction)) if fraction > 0 and n >= 3 else 0


def split_flat(
    src: Path,
    dst: Path,
    *,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    force: bool = False,
    min_per_class: int = 0,
) -> IngestReport:
    """Stratified, seeded split of one-folder-per-brand SRC into DST/train|val|test.

    Files with identical bytes are grouped and the group goes to one split only, so test never
    holds a copy of a training image. Unreadable files are skipped and reported.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise UserError(f"--val {val} and --test {test} must be fractions that sum below 1")
    report = IngestReport()
    classes = _class_images(src, report)
    prepare_destination(src, dst, force)
    assigned: dict[str, str] = {}  # image hash → split, across classes too
    rng = np.random.default_rng(seed)
    for cls, files in classes.items():
        groups: dict[str, list[Path]] = defaultdict(list)
        for f in files:
            try:
                load_image(f)
            except BadImage as e:
                report.skipped.append(str(e))
                continue
            groups[sha256(f)].append(f)
        images = sum(len(g) for g in groups.values())
        if images < max(min_per_class, 1):
            report.dropped_classes[cls] = images
            continue
        hashes = sorted(groups)
        rng.shuffle(hashes)
        n_test, n_val = _share(len(hashes), test), _share(len(hashes), val)
        planned = ["test"] * n_test + ["val"] * n_val + ["train"] * (len(hashes) - n_test - n_val)
        for digest, split in zip(hashes, planned, strict=True):
            split = assigned.setdefault(digest, split)
            for f in groups[digest]:
                place(f, dst / split / cls / f.name, report)
                report.add(split, cls)
    return report


def make_of(class_name: str) -> str:
    """Stanford Cars class name → make: `BMW M3 Coupe 2012` → `BMW`; multi-word makes whole."""
    for make in MULTI_WORD_MAKES:
        if class_name == make or class_name.startswith(make + " "):
            return make
    return class_name.split()[0]


@dataclass(frozen=True)
class Annotation:
    image: Path
    make: str
    box: tuple[int, int, int, int]


def _read_mat(path: Path) -> dict:
    from scipy.io import loadmat

    if not path.is_file():
        raise UserError(f"Stanford Cars devkit file {path} is missing")
    try:
        return loadmat(str(path), squeeze_me=True)
    except (ValueError, OSError, TypeError) as e:
        raise UserError(f"{path}: not a readable .mat file ({e})") from e


def _find(root: Path, names: Iterable[str]) -> Path | None:
    for name in names:
        hits = sorted(root.rglob(name))
        if hits:
            return hits[0]
    return None


def _annotations(
    root: Path, mat_name: str, images: str, class_names: list[str]
) -> list[Annotation]:
    mat = _find(root, [mat_name])
    folder = _find(root, [images])
    if mat is None or folder is None:
        return []
    ann = np.atleast_1d(_read_mat(mat)["annotations"])
    if "class" not in (ann.dtype.names or ()):
        return []  # the unlabelled test annotations
    return [
        Annotation(
            image=folder / _path_part(str(a["fname"]), mat, "file name"),
            make=_path_part(
                make_of(class_names[_class_of(a, mat, len(class_names))]), mat, "make"
            ),
            box=_box(a, mat),
        )
        for a in ann
    ]


def _whole(value: Any) -> int | None:
    """`value` as an int if it is a finite whole number, else None."""
    number = float(value)
    return int(number) if math.isfinite(number) and number.is_integer() else None


def _class_of(a: Any, mat: Path, count: int) -> int:
    """The 0-based class of annotation `a`: its 1-based id must name one of `count` classes
    (id 0 would silently have become the last class)."""
    given = _whole(a["class"])
    if given is None or not 1 <= given <= count:
        raise UserError(f"{mat}: {a['fname']}: class {a['class']} is not a class id in 1..{count}")
    return given - 1


def _box(a: Any, mat: Path) -> tuple[int, int, int, int]:
    """The annotated box (x1, y1, x2, y2): whole numbers, x1 < x2, y1 < y2, none negative."""
    corners = [_whole(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")]
    x1, y1, x2, y2 = (c if c is not None else -1 for c in corners)
    if min(x1, y1) < 0 or x1 >= x2 or y1 >= y2:
        shown = ", ".join(str(a[k]) for k in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2"))
        raise UserError(
            f"{mat}: {a['fname']}: box ({shown}) is not a box of whole pixels with "
            "0 <= x1 < x2 and 0 <= y1 < y2"
        )
    return x1, y1, x2, y2


def _path_part(name: str, source: Path, what: str) -> str:
    """`name` if it is one plain path component; names from a .mat file become folder and file
    names under the destination, and must not lead out of it (`../x`, `/etc/x`)."""
    if (
        name in ("", ".", "..")
        or Path(name).name != name
        or any(c in name for c in "/\\\0")
        or Path(name).is_absolute()
    ):
        raise UserError(f"{source}: {what} {name!r} is not a plain name; refusing to write it")
    return name


def import_stanford_cars(
    src: Path,
    dst: Path,
    *,
    min_per_class: int = 0,
    crop: bool = False,
    val: float = 0.15,
    seed: int = 0,
    force: bool = False,
) -> IngestReport:
    """Stanford Cars (devkit .mat files) → DST/train|val|test by make; val carved from train."""
    meta = _find(src, ["cars_meta.mat"])
    if meta is None:
        raise UserError(f"{src}: no devkit/cars_meta.mat (is this the Stanford Cars download?)")
    class_names = [str(c) for c in np.atleast_1d(_read_mat(meta)["class_names"])]
    train = _annotations(src, "cars_train_annos.mat", "cars_train", class_names)
    test = _annotations(src, "cars_test_annos_withlabels.mat", "cars_test", class_names)
    if not train:
        raise UserError(f"{src}: no cars_train_annos.mat with a cars_train/ image folder")
    rng = np.random.default_rng(seed)
    if not test:  # no labelled test annotations: carve test from train as well
        order = rng.permutation(len(train))
        cut = _share(len(train), 0.15)
        test = [train[i] for i in order[:cut]]
        train = [train[i] for i in order[cut:]]
    per_make: dict[str, int] = defaultdict(int)
    for a in train + test:
        per_make[a.make] += 1
    keep = {m for m, n in per_make.items() if n >= min_per_class}
    prepare_destination(src, dst, force)
    report = IngestReport(dropped_classes={m: n for m, n in per_make.items() if m not in keep})
    by_make: dict[str, list[Annotation]] = defaultdict(list)
    for a in train:
        by_make[a.make].append(a)
    for make in sorted(keep):
        group = by_make[make]
        order = rng.permutation(len(group))
        n_val = _share(len(group), val)
        for rank, i in enumerate(order):
            _write_annotated(group[i], dst / ("val" if rank < n_val else "train"), crop, report)
    for a in test:
        if a.make in keep:
            _write_annotated(a, dst / "test", crop, report)
    return report


def _write_annotated(a: Annotation, split_dir: Path, crop: bool, report: IngestReport) -> None:
    target = split_dir / a.make / a.image.name
    if not crop:
        if not a.image.is_file():
            report.skipped.append(f"{a.image}: listed in the annotations but missing")
            return
        place(a.image, target, report)
    else:
        try:
            image = load_image(a.image)
        except BadImage as e:
            report.skipped.append(str(e))
            return
        _, _, x2, y2 = a.box
        if x2 > image.width + 1 or y2 > image.height + 1:  # one pixel of slack: 1-based boxes
            report.skipped.append(
                f"{a.image}: box {a.box} lies outside the {image.width}×{image.height} image"
            )
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        image.crop(a.box).save(target, quality=95)  # formats without a quality setting ignore it
        report.copied += 1
    report.add(split_dir.name, a.make)


def kaggle_credentials() -> bool:
    """Whether kagglehub will find credentials (environment or ~/.kaggle/kaggle.json)."""
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return True
    config = Path(os.environ.get("KAGGLE_CONFIG_DIR", Path.home() / ".kaggle"))
    return (config / "kaggle.json").is_file() or (config / "access_token").is_file()


def find_split_root(folder: Path, depth: int = 3) -> Path | None:
    """The folder (at most `depth` levels down) that holds train/ val/ test/."""
    if all((folder / s).is_dir() for s in SPLITS):
        return folder
    if depth == 0:
        return None
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        found = find_split_root(child, depth - 1)
        if found:
            return found
    return None


def download_kaggle(
    dataset: str, dst: Path, *, force: bool = False, timeout_s: float = 10
) -> IngestReport:
    """Download a Kaggle dataset with kagglehub and link its train/val/test folders into DST."""
    if "/" not in dataset:
        raise UserError(f"Kaggle dataset {dataset!r}: expected OWNER/DATASET")
    try:
        import kagglehub
    except ImportError:
        raise UserError(
            "kagglehub is not installed: pip install 'carbrand-search[kaggle]'"
        ) from None
    if not kaggle_credentials():
        raise UserError(
            "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json "
            "(from kaggle.com → Settings → API) in ~/.kaggle/"
        )
    try:
        socket.create_connection(("www.kaggle.com", 443), timeout=timeout_s).close()
    except OSError as e:
        raise UserError(f"cannot reach www.kaggle.com ({e}); check the network") from e
    downloaded = Path(kagglehub.dataset_download(dataset))
    root = find_split_root(downloaded)
    if root is None:
        raise UserError(f"{downloaded}: no folder with train/ val/ test/ inside the download")
    prepare_destination(downloaded, dst, force)
    report = IngestReport()
    for split in SPLITS:
        for f in sorted((root / split).rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                place(f, dst / split / f.relative_to(root / split), report)
                report.add(split, f.relative_to(root / split).parts[0])
    return report
