"""Dataset discovery and validation: every bad input is a one-line error naming the problem."""

from pathlib import Path

import pytest
from conftest import write_tree
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import inspect, scan

runner = CliRunner()


def test_scan_finds_classes_and_files(tiny_tree: Path) -> None:
    tree = scan(tiny_tree)
    assert tree.classes == ("Alfa Romeo", "BMW", "Citroën")
    assert len(tree.splits["train"].files) == 9
    assert tree.splits["val"].labels == (0, 0, 0, 1, 1, 1, 2, 2, 2)


def test_missing_split_folder(tmp_path: Path) -> None:
    write_tree(tmp_path, {"a": 1, "b": 1}, splits=("train", "val"))
    with pytest.raises(UserError, match=r"missing split folder 'test/'"):
        scan(tmp_path)


def test_class_in_one_split_only(tiny_tree: Path) -> None:
    write_tree(tiny_tree, {"Dacia": 1}, splits=("train",))
    with pytest.raises(UserError, match=r"class 'Dacia' is in train/ but not in val/"):
        scan(tiny_tree)


def test_empty_class_folder(tiny_tree: Path) -> None:
    for f in (tiny_tree / "val" / "BMW").iterdir():
        f.unlink()
    with pytest.raises(UserError, match=r"val/BMW: empty class folder"):
        scan(tiny_tree)


def test_fewer_than_two_classes(tmp_path: Path) -> None:
    write_tree(tmp_path, {"only": 2})
    with pytest.raises(UserError, match="need at least 2"):
        scan(tmp_path)


def test_unreadable_image_is_named_or_skipped(tiny_tree: Path) -> None:
    bad = tiny_tree / "test" / "BMW" / "broken.jpg"
    bad.write_bytes(b"not a jpeg at all")
    with pytest.raises(UserError, match=r"broken\.jpg: not a readable image.*--skip-bad"):
        inspect(scan(tiny_tree), skip_bad=False)
    summaries = inspect(scan(tiny_tree), skip_bad=True)
    assert [b.path.name for b in summaries["test"].bad] == ["broken.jpg"]
    assert summaries["test"].per_class["BMW"] == 3


def test_hidden_files_are_ignored(tiny_tree: Path) -> None:
    (tiny_tree / "train" / "BMW" / ".DS_Store").write_bytes(b"\0\0")
    assert len(scan(tiny_tree).splits["train"].files) == 9


def test_check_cli_error_is_one_line_and_nonzero(tiny_tree: Path) -> None:
    (tiny_tree / "train" / "BMW" / "zero.png").write_bytes(b"")
    result = runner.invoke(app, ["data", "check", str(tiny_tree)])
    assert result.exit_code == 2
    assert "zero.png" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Traceback" not in result.output


def test_check_cli_skip_bad_counts(tiny_tree: Path) -> None:
    (tiny_tree / "train" / "BMW" / "zero.png").write_bytes(b"")
    result = runner.invoke(
        app, ["data", "check", str(tiny_tree), "--skip-bad"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    bad_row = next(line for line in result.output.splitlines() if "bad files" in line)
    assert bad_row.split("│")[2].strip() == "1"


def test_demo_output_passes_check(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    made = runner.invoke(
        app, ["data", "demo", str(out), "--classes", "3", "--per-class", "10", "--size", "48"]
    )
    assert made.exit_code == 0, made.output
    checked = runner.invoke(app, ["data", "check", str(out)], terminal_width=200)
    assert checked.exit_code == 0, checked.output
    assert "valid dataset" in checked.output
    total = next(line for line in checked.output.splitlines() if "total" in line)
    assert [c.strip() for c in total.split("│")[2:5]] == ["18", "6", "6"]  # 3 brands × (6, 2, 2)


def test_demo_refuses_non_empty_folder(tiny_tree: Path) -> None:
    result = runner.invoke(app, ["data", "demo", str(tiny_tree)])
    assert result.exit_code == 2
    assert "not empty" in result.output


def test_demo_twice_with_same_settings_keeps_the_first(tmp_path: Path) -> None:
    args = [
        "data",
        "demo",
        str(tmp_path / "d"),
        "--classes",
        "2",
        "--per-class",
        "10",
        "--size",
        "32",
    ]
    assert runner.invoke(app, args).exit_code == 0
    first = (tmp_path / "d" / "train" / "Borealis" / "00000.jpg").read_bytes()
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "already there" in again.output
    assert (tmp_path / "d" / "train" / "Borealis" / "00000.jpg").read_bytes() == first
    other = runner.invoke(app, [*args[:-1], "48"])
    assert other.exit_code == 2 and "not empty" in other.output
