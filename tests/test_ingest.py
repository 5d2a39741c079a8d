"""Getting real data in: splitting a flat tree, Stanford Cars by make, Kaggle without credentials."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import Result
from PIL import Image
from scipy.io import loadmat, savemat
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.data import ingest
from carbrand_search.data.imagefolder import scan
from carbrand_search.data.ingest import make_of, sha256, split_flat

runner = CliRunner()


def flat_tree(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(1)
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )
    return root


def listing(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_split_is_stratified_deterministic_and_leaves_source_alone(tmp_path: Path) -> None:
    src = flat_tree(tmp_path / "flat", {"Aston Martin": 40, "BMW": 20, "smart": 10})
    before = listing(src)
    a = split_flat(src, tmp_path / "a", val=0.15, test=0.15, seed=0, force=False)
    split_flat(src, tmp_path / "b", val=0.15, test=0.15, seed=0, force=False)
    split_flat(src, tmp_path / "c", val=0.15, test=0.15, seed=1, force=False)
    assert listing(src) == before
    assert a.counts["test"] == {"Aston Martin": 6, "BMW": 3, "smart": 2}
    assert a.counts["val"] == {"Aston Martin": 6, "BMW": 3, "smart": 2}
    assert a.counts["train"] == {"Aston Martin": 28, "BMW": 14, "smart": 6}
    assert sorted(listing(tmp_path / "a")) == sorted(listing(tmp_path / "b"))
    assert sorted(listing(tmp_path / "a")) != sorted(listing(tmp_path / "c"))
    assert scan(tmp_path / "a").classes == ("Aston Martin", "BMW", "smart")


def test_duplicates_stay_in_one_split(tmp_path: Path) -> None:
    src = flat_tree(tmp_path / "flat", {"Audi": 30, "Ford": 30})
    for i in range(10):  # the same photo filed three times, once under the other brand too
        shutil.copy(src / "Audi" / f"{i}.png", src / "Audi" / f"copy-{i}.png")
        shutil.copy(src / "Audi" / f"{i}.png", src / "Ford" / f"also-{i}.png")
    split_flat(src, tmp_path / "out", val=0.2, test=0.2, seed=0, force=False)
    where: dict[str, set[str]] = {}
    for path in (tmp_path / "out").rglob("*.png"):
        where.setdefault(sha256(path), set()).add(path.relative_to(tmp_path / "out").parts[0])
    assert all(len(splits) == 1 for splits in where.values())
    checked = runner.invoke(app, ["data", "check", str(tmp_path / "out")])
    assert checked.exit_code == 0 and "leakage" not in checked.output


def test_hard_links_and_copy_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = flat_tree(tmp_path / "flat", {"Audi": 6, "Ford": 6})
    linked = split_flat(src, tmp_path / "linked", val=0.2, test=0.2, seed=0, force=False)
    assert (linked.linked, linked.copied) == (12, 0)
    some = next((tmp_path / "linked" / "train" / "Audi").iterdir())
    assert os.stat(some).st_nlink == 2

    def no_links(*_: object) -> None:
        raise OSError("cross-device link")

    monkeypatch.setattr(ingest.os, "link", no_links)
    copied = split_flat(src, tmp_path / "copied", val=0.2, test=0.2, seed=0, force=False)
    assert (copied.linked, copied.copied) == (0, 12)
    assert os.stat(next((tmp_path / "copied" / "train" / "Audi").iterdir())).st_nlink == 1


def test_split_refuses_to_overwrite_and_bad_fractions(tmp_path: Path) -> None:
    src = flat_tree(tmp_path / "flat", {"Audi": 6, "Ford": 6})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    refused = runner.invoke(app, ["data", "split", str(src), str(tmp_path / "out")])
    assert refused.exit_code == 2 and "--force" in refused.output
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
    with pytest.raises(UserError, match="sum below 1"):
        split_flat(src, tmp_path / "x", val=0.6, test=0.5, seed=0, force=False)
    with pytest.raises(UserError, match="overlaps the source"):
        split_flat(src, src / "inside", val=0.2, test=0.2, seed=0, force=False)


def test_split_force_replaces_only_an_earlier_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--force replaces a folder holding an earlier split, and nothing else: not a file of the
    user's beside it (named in the error), not the current folder or one above it."""
    src = flat_tree(tmp_path / "flat", {"Audi": 6, "Ford": 6})
    out = tmp_path / "out"

    def split(dst: str) -> Result:
        return runner.invoke(app, ["data", "split", str(src), dst, "--force"])

    assert split(str(out)).exit_code == 0
    first = sorted(p.name for p in (out / "train" / "Audi").iterdir())
    again = split(str(out))
    assert again.exit_code == 0 and "valid dataset" in again.output, again.output
    assert sorted(p.name for p in (out / "train" / "Audi").iterdir()) == first
    (out / "keep.txt").write_text("mine")
    refused = split(str(out))
    assert refused.exit_code == 2 and "keep.txt" in refused.output
    assert (out / "keep.txt").read_text() == "mine" and (out / "train").is_dir()
    (out / "keep.txt").unlink()
    monkeypatch.chdir(out / "train")
    for here in (".", "..", str(out)):
        refused = split(here)
        assert refused.exit_code == 2 and "current folder" in refused.output, here
    assert sorted(p.name for p in (out / "train" / "Audi").iterdir()) == first


def test_split_skips_unreadable_and_drops_small_classes(tmp_path: Path) -> None:
    src = flat_tree(tmp_path / "flat", {"Audi": 10, "Ford": 10, "Geo": 3})
    (src / "Audi" / "broken.jpg").write_bytes(b"nope")
    report = split_flat(
        src, tmp_path / "out", val=0.2, test=0.2, seed=0, force=False, min_per_class=5
    )
    assert report.dropped_classes == {"Geo": 3}
    assert len(report.skipped) == 1 and "broken.jpg" in report.skipped[0]
    assert scan(tmp_path / "out").classes == ("Audi", "Ford")


def test_check_warns_about_leakage(tmp_path: Path) -> None:
    src = flat_tree(tmp_path / "flat", {"Audi": 10, "Ford": 10})
    out = tmp_path / "out"
    split_flat(src, out, val=0.2, test=0.2, seed=0, force=False)
    leaked = next((out / "train" / "Audi").iterdir())
    shutil.copy(leaked, out / "test" / "Audi" / "planted.png")
    result = runner.invoke(app, ["data", "check", str(out)])
    assert result.exit_code == 0
    assert "1 image(s) in test/ have the same bytes as images in train/" in result.output


@pytest.mark.parametrize(
    ("name", "make"),
    [("BMW M3 Coupe 2012", "BMW"), ("AM General Hummer SUV 2000", "AM General"),
     ("Aston Martin V8 Vantage Convertible 2012", "Aston Martin"),
     ("Land Rover Range Rover SUV 2012", "Land Rover"), ("Rolls-Royce Phantom Sedan 2012", "Rolls-Royce"),
     ("Mercedes-Benz C-Class Sedan 2012", "Mercedes-Benz"), ("smart fortwo Convertible 2012", "smart"),
     ("Ram C/V Cargo Van Minivan 2012", "Ram")],
)  # fmt: skip
def test_make_of_stanford_class_names(name: str, make: str) -> None:
    assert make_of(name) == make


def fake_stanford(root: Path, with_test_labels: bool = True) -> Path:
    """A devkit with 4 model classes of 3 makes (two multi-word), written with scipy."""
    classes = ["AM General Hummer SUV 2000", "Aston Martin V8 Vantage Coupe 2012",
               "Aston Martin Virage Coupe 2012", "BMW X6 SUV 2012"]  # fmt: skip
    (root / "devkit").mkdir(parents=True)
    savemat(
        root / "devkit" / "cars_meta.mat",
        {"class_names": np.array(classes, dtype=object).reshape(1, -1)},
    )
    fields = [
        ("bbox_x1", "O"),
        ("bbox_y1", "O"),
        ("bbox_x2", "O"),
        ("bbox_y2", "O"),
        ("class", "O"),
        ("fname", "O"),
    ]
    rng = np.random.default_rng(0)
    for folder, mat, per_class in (("cars_train", "devkit/cars_train_annos.mat", [6, 10, 10, 16]),
                                   ("cars_test", "cars_test_annos_withlabels.mat", [3, 3, 3, 3])):  # fmt: skip
        (root / folder).mkdir()
        rows = []
        for cls in range(1, 5):
            for i in range(per_class[cls - 1]):
                name = f"{cls}{i:04d}.jpg"
                Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(
                    root / folder / name
                )
                rows.append((5, 4, 45, 34, cls, name))
        if folder == "cars_test" and not with_test_labels:
            continue
        savemat(root / mat, {"annotations": np.array(rows, dtype=fields).reshape(1, -1)})
    return root


def test_stanford_cars_maps_models_to_makes(tmp_path: Path) -> None:
    src = fake_stanford(tmp_path / "stanford_cars")
    out = tmp_path / "makes"
    result = runner.invoke(app, ["data", "import-stanford-cars", str(src), str(out), "--crop"])
    assert result.exit_code == 0, result.output
    tree = scan(out)
    assert tree.classes == ("AM General", "Aston Martin", "BMW")
    train, val, test = (len(tree.splits[s].files) for s in ("train", "val", "test"))
    assert (train + val, test) == (42, 12)
    assert len([f for f in tree.splits["test"].files if f.parent.name == "Aston Martin"]) == 6
    assert Image.open(tree.splits["train"].files[0]).size == (40, 30)  # cropped to the box
    again = tmp_path / "again"
    runner.invoke(app, ["data", "import-stanford-cars", str(src), str(again), "--crop"])
    assert sorted(p.name for p in again.rglob("*.jpg")) == sorted(
        p.name for p in out.rglob("*.jpg")
    )


def test_stanford_min_per_class_and_missing_test_labels(tmp_path: Path) -> None:
    src = fake_stanford(tmp_path / "stanford_cars", with_test_labels=False)
    out = tmp_path / "makes"
    result = runner.invoke(
        app, ["data", "import-stanford-cars", str(src), str(out), "--min-per-class", "15"]
    )
    assert result.exit_code == 0, result.output
    assert "dropped class AM General: 6 images" in result.output
    tree = scan(out)
    assert tree.classes == ("Aston Martin", "BMW")
    assert sum(len(tree.splits[s].files) for s in ("train", "val", "test")) == 36
    assert len(tree.splits["test"].files) > 0  # carved from train: no labelled test annotations


@pytest.mark.parametrize(
    ("bad_class", "bad_file", "named"),
    [
        ("../../escaped Model 2012", None, "make '../../escaped'"),
        ("/etc Model 2012", None, "make '/etc'"),
        (None, "../../escaped.jpg", "file name '../../escaped.jpg'"),
        (None, "/tmp/abs.jpg", "file name '/tmp/abs.jpg'"),
    ],
)
def test_stanford_names_that_leave_the_destination_are_refused(
    tmp_path: Path, bad_class: str | None, bad_file: str | None, named: str
) -> None:
    src = fake_stanford(tmp_path / "stanford_cars")
    if bad_class is not None:
        classes = ["AM General Hummer SUV 2000", bad_class, "Aston Martin Virage Coupe 2012",
                   "BMW X6 SUV 2012"]  # fmt: skip
        savemat(
            src / "devkit" / "cars_meta.mat",
            {"class_names": np.array(classes, dtype=object).reshape(1, -1)},
        )
    if bad_file is not None:
        mat = src / "devkit" / "cars_train_annos.mat"
        ann = loadmat(mat)["annotations"]
        ann[0, 0]["fname"] = np.array([bad_file])
        savemat(mat, {"annotations": ann})
    out = tmp_path / "deep" / "makes"
    result = runner.invoke(app, ["data", "import-stanford-cars", str(src), str(out)])
    assert result.exit_code == 2
    assert named in result.output and "is not a plain name" in result.output
    assert not any((tmp_path / "deep").rglob("*.jpg"))  # nothing written, inside or out
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "escaped.jpg").exists()


def test_stanford_without_devkit_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    result = runner.invoke(
        app, ["data", "import-stanford-cars", str(tmp_path / "empty"), str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "cars_meta.mat" in result.output


def test_kaggle_without_credentials_fails_fast(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("kagglehub")
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-config"))
    result = runner.invoke(
        app, ["data", "download", "kaggle", "owner/car-brands", str(tmp_path / "d")]
    )
    assert result.exit_code == 2
    assert "no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY" in result.output
    assert not (tmp_path / "d").exists()


def test_split_root_found_nested(tmp_path: Path) -> None:
    for split in ("train", "val", "test"):
        (tmp_path / "archive" / "Car Brands" / split / "Audi").mkdir(parents=True)
    assert ingest.find_split_root(tmp_path / "archive") == tmp_path / "archive" / "Car Brands"
    assert ingest.find_split_root(tmp_path / "archive" / "Car Brands" / "train") is None


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("class", 0, "class 0 is not a class id in 1..4"),  # was silently the last class
        ("class", 5, "class 5 is not a class id in 1..4"),
        ("bbox_x1", float("nan"), "is not a box of whole pixels"),
        ("bbox_y1", -3, "is not a box of whole pixels"),
        ("bbox_x2", 2, "is not a box of whole pixels"),  # x2 < x1
    ],
)
def test_stanford_annotations_out_of_range_are_one_line(
    tmp_path: Path, field: str, value: float, named: str
) -> None:
    src = fake_stanford(tmp_path / "stanford_cars")
    mat = src / "devkit" / "cars_train_annos.mat"
    ann = loadmat(mat)["annotations"]
    ann[0, 0][field] = np.array([[value]])
    savemat(mat, {"annotations": ann})
    out = tmp_path / "makes"
    result = runner.invoke(app, ["data", "import-stanford-cars", str(src), str(out), "--crop"])
    assert result.exit_code == 2, result.output
    assert named in result.output and "10000.jpg" in result.output
    assert "\n" not in result.output.strip() and not any(out.rglob("*.jpg"))


def test_stanford_box_beyond_the_image_skips_that_image(tmp_path: Path) -> None:
    src = fake_stanford(tmp_path / "stanford_cars")
    mat = src / "devkit" / "cars_train_annos.mat"
    ann = loadmat(mat)["annotations"]
    ann[0, 0]["bbox_x2"] = np.array([[10**9]])
    savemat(mat, {"annotations": ann})
    out = tmp_path / "makes"
    result = runner.invoke(app, ["data", "import-stanford-cars", str(src), str(out), "--crop"])
    assert result.exit_code == 0, result.output
    assert "lies outside the 60×40 image" in result.output
    kept = [p for s in ("train", "val") for p in (out / s).rglob("10000.jpg")]
    assert not kept and len(list((out / "test").rglob("10000.jpg"))) == 1
