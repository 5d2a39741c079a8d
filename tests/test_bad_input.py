"""Bad input, tried systematically: never a traceback, always one line naming the key or file."""

import os
import re
import tomllib
from pathlib import Path

import pytest
from conftest import REPO, write_tree
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import inspect, scan
from carbrand_search.search.spec import apply_overrides, load_spec
from carbrand_search.search.storage import open_storage

BASE = tomllib.loads((REPO / "studies" / "cnn-hpo.toml").read_text())
SECTIONS = ["study", "data", "model", "train", "sampler", "pruner"]
values = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.floats(allow_nan=True),
    st.text(max_size=12), st.lists(st.integers(-5, 600), max_size=5),
)  # fmt: skip


def to_toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return (
            "nan"
            if value != value
            else (
                "inf"
                if value == float("inf")
                else "-inf"
                if value == float("-inf")
                else repr(value)
            )
        )
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(value, list):
        return "[" + ", ".join(to_toml(v) for v in value) + "]"
    return str(value)


def render(doc: dict) -> str:
    lines = []
    for section, table in doc.items():
        if section == "space":
            for group, params in table.items():
                for name, spec in params.items():
                    lines.append(f"[space.{group}.{name}]")
                    lines += [f"{k} = {to_toml(v)}" for k, v in spec.items() if v is not None]
            continue
        lines.append(f"[{section}]")
        lines += [f"{k} = {to_toml(v)}" for k, v in table.items() if v is not None]
    return "\n".join(lines) + "\n"


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    section=st.sampled_from(SECTIONS),
    key=st.one_of(st.sampled_from(["epochs", "lr", "name", "filters", "n_trials", "image_size", "crop",
                                   "optimizer", "warmup_epochs", "seed", "nonsense"]), st.text(min_size=1, max_size=8)),
    value=values,
)  # fmt: skip
def test_mutated_study_files_fail_cleanly(
    tmp_path: Path, section: str, key: str, value: object
) -> None:
    assume(value is not None and key.isidentifier())  # TOML has no null; keys are names
    doc = {s: dict(t) for s, t in BASE.items()}
    doc.setdefault(section, {})[key] = value
    path = tmp_path / "fuzz.toml"
    path.write_text(render(doc))
    try:
        load_spec(str(path))
    except UserError as e:
        message = str(e)
        assert "\n" not in message and str(path) in message
        assert len(message) < 600


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    group=st.sampled_from(["train", "model", "data", "bogus"]),
    name=st.sampled_from(["lr", "batch_size", "dropout", "filters", "image_size", "zzz"]),
    low=values, high=values, default=values, log=st.one_of(st.none(), st.booleans()),
)  # fmt: skip
def test_mutated_search_spaces_fail_cleanly(
    tmp_path: Path, group: str, name: str, low, high, default, log
) -> None:
    doc = {s: dict(t) for s, t in BASE.items()}
    doc["space"] = {group: {name: {"low": low, "high": high, "default": default, "log": log}}}
    path = tmp_path / "space.toml"
    path.write_text(render(doc))
    try:
        load_spec(str(path))
    except UserError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path))


@settings(max_examples=150, deadline=None)
@given(key=st.text(max_size=20), value=st.text(max_size=20))
def test_random_overrides_never_crash(key: str, value: str) -> None:
    spec = load_spec("cnn-hpo")
    try:
        apply_overrides(spec.resolve(spec.defaults()), [f"{key}={value}"])
    except UserError as e:
        assert "\n" not in str(e) and str(e).startswith("--set")


def test_huge_values_are_range_errors(tmp_path: Path) -> None:
    spec = load_spec("cnn-hpo")
    with pytest.raises(UserError, match=r"data\.image_size must be in"):
        apply_overrides(spec.resolve({}), ["data.image_size=100000000"])
    with pytest.raises(UserError, match=r"train\.epochs must be in \[1, 10000\], got"):
        apply_overrides(spec.resolve({}), ["train.epochs=-1"])


CNN_HPO = (REPO / "studies" / "cnn-hpo.toml").read_text()


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("lr = 3e-3", "lr = inf", r"train\.lr: expected a finite number, got inf"),
        ("lr = 3e-3", "lr = nan", r"train\.lr: expected a finite number, got nan"),
        ("high = 1e-2", "high = inf", r"space\.train\.lr\.high: expected a finite number"),
        (
            "seed = 0\n\n[space",
            "seed = 4294967296\n\n[space",
            r"train\.seed must be in \[0, 4294967296\)",
        ),
        ("seed = 0\n", "seed = -3\n", r"train\.seed must be in \[0, 4294967296\)"),
        ("cache_size = 256", "cache_size = 30000", r"data\.cache_size must be in \[8, 1024\]"),
        (
            "choices = [16, 32, 64]",
            "choices = [16, 32, 1000000000000]",
            r"space\.train\.batch_size\.choices = 1000000000000: train\.batch_size must be in",
        ),
        (
            "filters = [32, 64, 128]\nkernel",
            "filters = [" + ", ".join(["8"] * 3000) + "]\nkernel",
            r"model\.filters needs 1 to 8 blocks, got 3000",
        ),
        ("[study]", "[study]\nx = " + "[" * 50_000 + "]" * 50_000, r"values nested too deeply"),
        (
            "[study]",
            "[study]\nresume_every_s = -1",
            r"study\.resume_every_s must be in \[0, 86400\]",
        ),
        ("[study]", "[study]\nresume_every_s = nan", r"study\.resume_every_s: expected a finite"),
    ],
)
def test_values_no_machine_can_serve_are_refused_by_name(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    assert old in CNN_HPO
    path = tmp_path / "s.toml"
    path.write_text(CNN_HPO.replace(old, new, 1))
    with pytest.raises(UserError, match=message) as info:
        load_spec(str(path))
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.epochs=2\ntrain.lr=5", r"--set train\.epochs: .* a value must be one line"),
        ("train.lr=inf", r"train\.lr: expected a finite number"),
        ("model.filters=" + "[" * 50_000 + "]" * 50_000, r"--set model\.filters: value nested"),
        ("train.batch_size=100000000000", r"train\.batch_size must be in \[1, 8192\]"),
    ],
)
def test_overrides_no_machine_can_serve_are_refused(override: str, message: str) -> None:
    spec = load_spec("cnn-hpo")
    with pytest.raises(UserError, match=message) as info:
        apply_overrides(spec.resolve({}), [override])
    assert "\n" not in str(info.value).replace("\\n", "")


def test_empty_space_is_allowed_and_empty_file_names_model(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('[model]\nname = "small_cnn"\n')
    assert load_spec(str(tmp_path / "a.toml")).space == ()
    (tmp_path / "b.toml").write_text("")
    with pytest.raises(UserError, match=r"model\.name is required"):
        load_spec(str(tmp_path / "b.toml"))


def test_dataset_edge_cases(tmp_path: Path) -> None:
    root = write_tree(tmp_path / "d", {"Audi": 2, "Ford": 2})
    os.symlink(root / "train", root / "train" / "Audi" / "loop")  # a symlink loop into the tree
    (root / "train" / "Ford" / "notes.txt").write_text("not an image")  # clutter: skipped
    (root / "train" / "Ford" / "notes.jpg").write_text("not an image")  # an image that fails
    (root / "val" / "Ford" / "empty.jpg").write_bytes(b"")
    tree = scan(root)  # linked folders are not followed, so the loop cannot hang the scan
    assert len(tree.splits["train"].files) == 5
    assert [p.name for p in tree.clutter] == ["notes.txt"]
    with pytest.raises(UserError, match=r"notes\.jpg: not a readable image"):
        inspect(tree, skip_bad=False)
    summaries = inspect(tree, skip_bad=True)
    assert {b.path.name for s in summaries.values() for b in s.bad} == {"notes.jpg", "empty.jpg"}


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mongodb://localhost/x", "unsupported URL"),
        ("postgresql+psycopg://u:hunter2@no-such-host.invalid/db", "cannot open"),
        ("postgresql+psycopg://u:hunter2@127.0.0.1:1/db", "cannot open"),
        ("postgresql+psycopg://:hunter2@127.0.0.1:1/db", "cannot open"),
        ("postgresql+psycopg://u@127.0.0.1:1/db?password=hunter2", "cannot open"),
        ("postgresql+psycopg://u:hunter2@[not-a-host/db", "cannot open"),
        pytest.param(
            "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_database_here",
            "cannot open",
            marks=pytest.mark.postgres,
        ),
        ("journal:///no/such/folder/journal.log", "does not exist"),
        ("sqlite:////no/such/folder/x.db", "cannot open"),
        ("postgresql+psycopg://u:hunter2@127.0.0.1:notaport/db", "not a valid database URL"),
        ("postgresql+psycopg://u:hunter2@[::1/db", "not a valid database URL"),
        ("postgresql+psycopg://u:hun@ter2@127.0.0.1/db", "unencoded '@'"),
    ],
)
def test_bad_storage_urls_are_one_line_errors_without_passwords(url: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        open_storage(url)
    assert "hunter2" not in str(info.value) and "\n" not in str(info.value)


def test_study_files_too_big_or_not_utf8_are_one_line_errors(tmp_path: Path) -> None:
    """A 50 MB study file was stored whole in the study (and served by the dashboard on every
    request); a file in another encoding was a UnicodeDecodeError traceback."""
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes('[study]\ndescription = "café"\n'.encode("latin-1"))
    with pytest.raises(UserError, match=r"latin1\.toml: not UTF-8 text"):
        load_spec(str(latin1))
    big = tmp_path / "big.toml"
    big.write_text("[study]\n" + "# padding\n" * 200_000)
    with pytest.raises(
        UserError, match=r"big\.toml: 2,000,008 bytes; a study file may hold at most"
    ):
        load_spec(str(big))
    many = tmp_path / "many.toml"
    choices = ", ".join(str(16 + i) for i in range(5_000))
    space = f"[space.train.batch_size]\nchoices = [{choices}]\ndefault = 16\n"
    many.write_text(f'[model]\nname = "small_cnn"\n{space}')
    with pytest.raises(UserError, match=r"space\.train\.batch_size\.choices has 5,000; at most"):
        load_spec(str(many))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "cnn-demo", "--workers", "0"], r"error: --workers must be >= 1, got 0\n"),
        (["run", "cnn-demo", "--top", "0"], r"error: --top must be >= 1, got 0\n"),
        (["run", "cnn-demo", "--threads", "0"], r"error: --threads must be >= 1, got 0\n"),
        (["run", "cnn-demo", "--n-trials", "0"], r"--n-trials must be in \[1, 1000000\], got 0"),
        (
            ["create", "cnn-demo", "--n-trials", "-3"],
            r"--n-trials must be in \[1, 1000000\], got -3",
        ),
        (["dashboard", "--port", "70000"], r"--port must be in \[1, 65535\], got 70000"),
    ],
)
def test_options_out_of_range_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    """--workers 0 was an UnboundLocalError traceback, --n-trials 0 ran the study file's
    budget, and port 70000 was an OverflowError from bind()."""
    from typer.testing import CliRunner

    from carbrand_search.cli import app

    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = CliRunner().invoke(app, [*args, "--storage", url])
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output) and "Traceback" not in result.output
    assert not (tmp_path / "study.db").exists() or "create" in args
