"""The decode-once cache: reused when nothing changed, rebuilt when stale or damaged, exact."""

import os
from pathlib import Path

import numpy as np
import pytest

from carbrand_search.cache import load_or_build
from carbrand_search.data import load_image, scan, square_array
from carbrand_search.errors import UserError


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
    data = first.path / "images.npy"
    raw = bytearray(data.read_bytes())
    raw[-50:] = bytes(50)  # flip pixels in the last image
    data.write_bytes(bytes(raw))
    again = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    assert not again.reused
    np.testing.assert_array_equal(again.images, expected)


def test_truncated_cache_is_rebuilt(tiny_tree: Path, tmp_path: Path) -> None:
    first = load_or_build(_train(tiny_tree), 16, "crop", tmp_path / "c", skip_bad=False)
    (first.path / "images.npy").write_bytes((first.path / "images.npy").read_bytes()[:200])
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
