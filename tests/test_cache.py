"""The decode-once cache: reused when nothing changed, rebuilt when stale or damaged, exact."""

import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from carbrand_search.core.errors import UserError
from carbrand_search.data import cache
from carbrand_search.data.cache import load_or_build
from carbrand_search.data.imagefolder import load_image, scan, square_array


def _train(tree_root: Path):
    return scan(tree_root).splits["train"]


def test_second_load_reuses_cache(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    second = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert (first.reused, second.reused) == (False, True)
    assert second.path == first.path
    assert second.images.shape == (9, 16, 16, 3)
    np.testing.assert_array_equal(first.images, second.images)


def test_changed_image_rebuilds(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    changed = tiny_tree / "train" / "BMW" / "0.png"
    load_image(tiny_tree / "train" / "BMW" / "1.png").save(changed)
    st = changed.stat()
    os.utime(changed, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not second.reused
    assert second.path != first.path
    row = list(_train(tiny_tree).files).index(changed)
    np.testing.assert_array_equal(second.images[row], second.images[row + 1])


def test_other_size_or_fit_is_another_cache(tiny_tree: Path, tmp_path: Path) -> None:
    a = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    b = load_or_build(_train(tiny_tree), 16, "pad", tmp_path / "c", skip_bad=False)
    c = load_or_build(_train(tiny_tree), 20, "crop", tmp_path / "c", skip_bad=False)
    assert len({a.path, b.path, c.path}) == 3
    assert not (b.reused or c.reused)


def test_corrupt_cache_is_rebuilt_not_used(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    expected = np.array(first.images)
    data = first.path / "images.u8"
    raw = bytearray(data.read_bytes())
    raw[-50:] = bytes(50)  # flip pixels in the last image
    data.write_bytes(bytes(raw))
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not again.reused
    np.testing.assert_array_equal(again.images, expected)


def test_truncated_cache_is_rebuilt(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    (first.path / "images.u8").write_bytes((first.path / "images.u8").read_bytes()[:200])
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not again.reused
    assert again.images.shape == (9, 16, 16, 3)


@pytest.mark.parametrize("fit", ["crop", "pad", "stretch"])
def test_cache_is_bit_identical_to_direct_decode(
    tiny_tree: Path, tmp_path: Path, fit: str
) -> None:
    split = _train(tiny_tree)
    cached = load_or_build(split, 16, fit, tmp_path / "c", skip_bad=False)
    for row, path in enumerate(split.files):
        np.testing.assert_array_equal(cached.images[row], square_array(load_image(path), 16, fit))
    assert cached.labels.tolist() == list(split.labels)


def test_bad_image_fails_build_or_is_skipped(tiny_tree: Path, tmp_path: Path) -> None:
    (tiny_tree / "train" / "BMW" / "bad.png").write_bytes(b"garbage")
    with pytest.raises(UserError, match=r"bad\.png: not a readable image"):
        load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    cached = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=True)
    assert cached.images.shape[0] == 9
    assert [Path(p).name for p in cached.skipped] == ["bad.png"]


def test_changed_labels_are_not_reused(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    labels = first.path / "labels.npy"
    np.save(labels, np.zeros(9, dtype=np.int64))  # same shape, wrong classes
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not again.reused
    assert again.labels.tolist() == list(_train(tiny_tree).labels)


def test_full_disk_is_a_clear_error_before_decoding(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    decoded: list[Path] = []
    monkeypatch.setattr(cache, "square_array", lambda *a: decoded.append(a[0]))
    with pytest.raises(UserError, match=r"cannot reserve 0 MB .*No space left on device"):
        load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not decoded  # nothing was decoded into a file that could not hold it
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".lock"]  # no temporary left


def test_a_disk_full_at_the_labels_is_a_clear_error(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The images' space is reserved up front; the small files after them can still meet a
    full disk (another process took the space): one line, no temporary folder left."""

    def no_space(*_: object, **__: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache.np, "save", no_space)
    with pytest.raises(UserError, match=r"cannot write .*labels \(No space left on device\)"):
        load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert [p.suffix for p in (tmp_path / "c").iterdir()] == [".lock"]


def test_stale_temporary_folders_are_swept(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    shutil.rmtree(first.path)  # force a rebuild
    stale = first.path.with_name(first.path.name + ".tmp-424242")
    stale.mkdir()
    (stale / "images.u8").write_bytes(b"half written")
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not again.reused and not stale.exists()


def test_verified_cache_is_read_without_the_lock(
    tiny_tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)

    def read_only(path: Path):
        raise UserError(f"cache folder {path.parent} is not writable (Read-only file system)")

    monkeypatch.setattr(cache, "locked", read_only)  # what a read-only folder does to the lock
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert again.reused and again.images.shape == (9, 16, 16, 3)
    with pytest.raises(UserError, match=r"not writable"):  # a missing cache still needs building
        load_or_build(_train(tiny_tree), 20, "crop", tmp_path / "c", skip_bad=False)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KB tmpfs of this test's own (needs root and mount permission, else skipped)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_a_read_only_cache_folder_serves_its_verified_cache(
    tiny_disk: Path, tiny_tree: Path
) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tiny_disk / "c", skip_bad=False)
    subprocess.run(["mount", "-o", "remount,ro", str(tiny_disk)], check=True)
    again = load_or_build(_train(tiny_tree), 16, "crop", tiny_disk / "c", skip_bad=False)
    assert again.reused and again.path == first.path
    with pytest.raises(
        UserError, match=r"cache folder .* is not writable \(Read-only file system"
    ):
        load_or_build(_train(tiny_tree), 20, "crop", tiny_disk / "c", skip_bad=False)


def test_a_really_full_disk_is_a_clear_error(tiny_disk: Path, demo_root: Path) -> None:
    split = scan(demo_root).splits["train"]  # 252 images × 64² × 3 = 3 MB, on 64 KB
    with pytest.raises(UserError, match=r"cannot reserve 3 MB .*No space left on device"):
        load_or_build(split, 64, "crop", tiny_disk / "cache", skip_bad=False)
    assert [p.suffix for p in (tiny_disk / "cache").iterdir()] == [".lock"]
