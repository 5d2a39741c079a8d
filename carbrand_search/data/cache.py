"""Decode-once cache: each split decoded and resized once into a uint8 array on disk.

Keyed by the split's file list, mtimes, sizes, the target size and fit, so an edited dataset
gets a new cache; verified by checksum (pixels, labels, skipped files) on every load, so a
damaged one is rebuilt, never used. A build streams each decoded image into a file allocated up
front, so memory stays bounded by a decode chunk and a full disk is an error before any work.
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

from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import (
    BadImage,
    Split,
    bad_files_error,
    decode_each,
    square_array,
)

CACHE_VERSION = 2  # 2: raw images.u8 (preallocated), labels inside the checksum


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
        try:
            st = path.stat()
            stamp: list[int | None] = [st.st_mtime_ns, st.st_size]
        except OSError:  # a dangling link: decoding reports it as a bad file
            stamp = [None, None]
        entries.append([str(path.relative_to(split.root)), *stamp, label])
    blob = json.dumps([CACHE_VERSION, size, fit, entries]).encode()
    return hashlib.sha256(blob).hexdigest()


IMAGES, LABELS, META = "images.u8", "labels.npy", "meta.json"


def _checksum(folder: Path, skipped: list[str]) -> str:
    """One digest over the pixels, the labels and the list of skipped files."""
    digest = hashlib.blake2b(digest_size=16)
    for name in (IMAGES, LABELS):
        with (folder / name).open("rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    digest.update(json.dumps(skipped).encode())
    return digest.hexdigest()


def _open_verified(folder: Path, key: str) -> CachedSplit | None:
    """The cached split if complete and intact, else None."""
    try:
        meta = json.loads((folder / META).read_text())
        if meta.get("key") != key or meta.get("checksum") != _checksum(folder, meta["skipped"]):
            return None
        size, count = int(meta["size"]), int(meta["count"])
        # Copy-on-write: torch wants writable arrays; the file itself is never modified.
        images = np.memmap(folder / IMAGES, np.uint8, "c", shape=(count, size, size, 3))
        labels = np.load(folder / LABELS)
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if labels.shape != (count,) or (folder / IMAGES).stat().st_size != images.nbytes:
        return None
    return CachedSplit(images, labels, tuple(meta["skipped"]), folder, reused=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    # Parallel workers starting at once: one builds, the others wait and then reuse.
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("w")
    except OSError as e:
        raise UserError(f"cache folder {path.parent} is not writable ({e.strerror or e})") from e
    with handle:
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
    folder = cache_root / f"{split.name}-{size}-{fit}-{key[:24]}"
    # A finished cache is only ever replaced whole (rename), so reading it needs no lock: a
    # read-only cache folder serves its verified caches.
    cached = _open_verified(folder, key)
    if cached is not None:
        return cached
    with locked(cache_root / f"{folder.name}.lock"):
        cached = _open_verified(folder, key)  # another worker may have built it meanwhile
        if cached is not None:
            return cached
        for stale in cache_root.glob(f"{folder.name}.tmp-*"):  # left by a killed build
            shutil.rmtree(stale, ignore_errors=True)
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
        row_bytes = size * size * 3
        _allocate(tmp / IMAGES, total * row_bytes)
        images = np.memmap(tmp / IMAGES, np.uint8, "r+", shape=(total, size, size, 3))
        bad: list[BadImage] = []
        labels: list[int] = []
        decoded = decode_each(
            split.files,
            lambda img: square_array(img, size, fit),
            on_progress and (lambda n: on_progress(n, total)),
        )
        for result, label in zip(decoded, split.labels, strict=True):
            if isinstance(result, BadImage):
                bad.append(result)
                continue
            images[len(labels)] = result  # good images packed in order: row = kept so far
            labels.append(label)
        if bad and not skip_bad:
            raise bad_files_error(bad)
        images.flush()
        del images
        os.truncate(tmp / IMAGES, len(labels) * row_bytes)  # the rows bad files did not use
        skipped = [str(b.path) for b in bad]
        try:
            np.save(tmp / LABELS, np.asarray(labels, dtype=np.int64))
            meta: dict[str, Any] = {
                "key": key,
                "count": len(labels),
                "size": size,
                "fit": fit,
                "skipped": skipped,
                "checksum": _checksum(tmp, skipped),
            }
            (tmp / META).write_text(json.dumps(meta, indent=1))
        except OSError as e:  # a full disk: the images fit (reserved above), the rest did not
            raise UserError(
                f"cache {folder.parent}: cannot write {folder.name}'s labels ({e.strerror or e}); "
                "free some space or point --cache-dir elsewhere"
            ) from e
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _allocate(path: Path, nbytes: int) -> None:
    """Reserve the file's blocks now: a sparse file on a full disk ends in SIGBUS when a page is
    first written through the memory map; an allocation fails here, with a reason."""
    with path.open("wb") as f:
        try:
            os.posix_fallocate(f.fileno(), 0, max(nbytes, 1))
        except OSError as e:
            raise UserError(
                f"cache {path.parent}: cannot reserve {nbytes / 2**20:.0f} MB for the decoded "
                f"images ({e.strerror or e}); free some space or point --cache-dir elsewhere"
            ) from e
