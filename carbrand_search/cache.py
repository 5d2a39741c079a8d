"""Decode-once cache: each split decoded and resized once into a uint8 array on disk.

Keyed by the split's file list, mtimes, sizes, the target size and fit, so an edited dataset
gets a new cache; verified by checksum on every load, so a damaged one is rebuilt, never used.
"""

import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carbrand_search.data import BadImage, Split, bad_files_error, decode_all, square_array
from carbrand_search.errors import UserError

CACHE_VERSION = 1


def default_cache_root() -> Path:
    """$CARBRAND_CACHE, else $XDG_CACHE_HOME/carbrand-search, else ~/.cache/carbrand-search."""
    if "CARBRAND_CACHE" in os.environ:
        return Path(os.environ["CARBRAND_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "carbrand-search"


@dataclass(frozen=True)
class CachedSplit:
    """A split as decoded arrays: images (N, S, S, 3) uint8 memmap, labels (N,) int64."""

    images: np.ndarray
    labels: np.ndarray
    skipped: tuple[str, ...]  # bad files left out (with --skip-bad)
    path: Path
    reused: bool


def cache_key(split: Split, size: int, fit: str) -> str:
    """Hash of everything the cached pixels depend on."""
    entries = []
    for path, label in zip(split.files, split.labels, strict=True):
        st = path.stat()
        entries.append([str(path.relative_to(split.root)), st.st_mtime_ns, st.st_size, label])
    blob = json.dumps([CACHE_VERSION, size, fit, entries]).encode()
    return hashlib.sha256(blob).hexdigest()


def _checksum(path: Path) -> str:
    digest = hashlib.blake2b(digest_size=16)
    with path.open("rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _open_verified(folder: Path, key: str) -> CachedSplit | None:
    """The cached split if complete and intact, else None."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("key") != key or meta.get("checksum") != _checksum(folder / "images.npy"):
            return None
        # Copy-on-write: torch wants writable arrays; the file itself is never modified.
        images = np.load(folder / "images.npy", mmap_mode="c")
        labels = np.load(folder / "labels.npy")
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    if images.shape[0] != labels.shape[0] or images.shape[0] != meta.get("count"):
        return None
    return CachedSplit(images, labels, tuple(meta["skipped"]), folder, reused=True)


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Parallel workers starting at once: one builds, the others wait and then reuse.
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_or_build(
    split: Split,
    size: int,
    fit: str,
    cache_root: Path,
    skip_bad: bool,
    on_progress: Callable[[int, int], None] | None = None,
) -> CachedSplit:
    """The split's cached arrays; built if missing, rebuilt if stale or damaged."""
    key = cache_key(split, size, fit)
    cache_root.mkdir(parents=True, exist_ok=True)
    folder = cache_root / f"{split.name}-{size}-{fit}-{key[:24]}"
    with _locked(cache_root / f"{folder.name}.lock"):
        cached = _open_verified(folder, key)
        if cached is not None:
            return cached
        _build(split, size, fit, folder, key, skip_bad, on_progress)
    built = _open_verified(folder, key)
    if built is None:
        raise UserError(f"cache {folder} could not be verified right after building it")
    return CachedSplit(built.images, built.labels, built.skipped, folder, reused=False)


def _build(
    split: Split,
    size: int,
    fit: str,
    folder: Path,
    key: str,
    skip_bad: bool,
    on_progress: Callable[[int, int], None] | None,
) -> None:
    tmp = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        total = len(split.files)
        arrays = decode_all(
            split.files,
            lambda img: square_array(img, size, fit),
            on_progress and (lambda n: on_progress(n, total)),
        )
        bad = [a for a in arrays if isinstance(a, BadImage)]
        if bad and not skip_bad:
            raise bad_files_error(bad)
        keep = [i for i, a in enumerate(arrays) if not isinstance(a, BadImage)]
        images = np.lib.format.open_memmap(
            tmp / "images.npy", mode="w+", dtype=np.uint8, shape=(len(keep), size, size, 3)
        )
        for row, i in enumerate(keep):
            images[row] = arrays[i]
        images.flush()
        del images
        np.save(tmp / "labels.npy", np.asarray([split.labels[i] for i in keep], dtype=np.int64))
        meta: dict[str, Any] = {
            "key": key,
            "count": len(keep),
            "size": size,
            "fit": fit,
            "skipped": [str(b.path) for b in bad],
            "checksum": _checksum(tmp / "images.npy"),
        }
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
