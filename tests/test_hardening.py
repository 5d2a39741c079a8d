"""Who can write and what leaks: published addresses, ignored secrets, a non-root image,
masked passwords, the example password refused, a tampered stored study refused."""

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import REPO, Done, write_study, write_tree
from optuna.artifacts.exceptions import ArtifactNotFound
from PIL import Image
from typer.testing import CliRunner

from carbrand_search.cli import app
from carbrand_search.core.errors import UserError
from carbrand_search.data.imagefolder import BadImage, load_image
from carbrand_search.reports.report import md_escape
from carbrand_search.search.storage import PG_CONNECT_ARGS, artifact_store, mask, open_storage
from carbrand_search.search.study import HASH_ATTR, TEXT_ATTR

runner = CliRunner()
compose_missing = pytest.mark.skipif(
    shutil.which("docker-compose") is None,
    reason="docker-compose not installed (.ci/run installs it)",
)


def _compose_config(tmp_path: Path, env_text: str, *profiles: str) -> subprocess.CompletedProcess:
    env_file = tmp_path / ".env"
    env_file.write_text(env_text)
    args = ["docker-compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yml")]
    args += [a for p in profiles for a in ("--profile", p)]
    return subprocess.run([*args, "config"], capture_output=True, text=True, timeout=60)


def _example_env(tmp_path: Path, password: str) -> str:
    text = (REPO / ".env.example").read_text().replace("./data/car-brands", str(tmp_path))
    return text.replace("POSTGRES_PASSWORD=\n", f"POSTGRES_PASSWORD={password}\n")


def _published(service: dict) -> list[tuple[str, str]]:
    """(host address, host port) of each published port, in either syntax compose prints."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", "0.0.0.0"), str(port["published"])))
        else:
            parts = str(port).split(":")
            out.append((parts[0], parts[1]) if len(parts) == 3 else ("0.0.0.0", parts[0]))
    return out


@compose_missing
def test_database_and_dashboard_are_published_on_loopback_only(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, _example_env(tmp_path, "s3cret-of-my-own"), "remote")
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    assert _published(services["postgres"]) == [("127.0.0.1", "5432")]
    assert _published(services["dashboard"]) == [("127.0.0.1", "8080")]
    assert not _published(services["worker"])
    # The only address open to other machines is the proxy, which asks for a login over HTTPS.
    assert _published(services["proxy"]) == [("0.0.0.0", "8443")]
    caddyfile = (REPO / "deploy" / "Caddyfile").read_text()
    assert "basic_auth" in caddyfile and "tls internal" in caddyfile
    assert "reverse_proxy dashboard:8080" in caddyfile
    assert "DASHBOARD_PASSWORD_HASH" in " ".join(services["proxy"]["command"])


@compose_missing
def test_compose_passes_the_password_beside_the_url(tmp_path: Path) -> None:
    """A password with "@" or "/" in it, written into the URL unencoded, broke the URL (and
    leaked its tail in errors): compose gives it to libpq as PGPASSWORD instead."""
    result = _compose_config(tmp_path, _example_env(tmp_path, "p@ss/w%rd"))
    assert result.returncode == 0, result.stderr
    env = yaml.safe_load(result.stdout)["services"]["worker"]["environment"]
    assert env["PGPASSWORD"] == "p@ss/w%rd"
    assert env["CARBRAND_STORAGE"] == "postgresql+psycopg://carbrand@postgres:5432/carbrand"


@compose_missing
def test_compose_refuses_the_example_env_without_a_password(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, _example_env(tmp_path, ""))
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD in .env" in result.stderr


def test_secrets_stay_out_of_git_and_the_image_and_it_runs_as_a_user() -> None:
    assert ".env" in (REPO / ".gitignore").read_text().split()
    assert ".env" in (REPO / ".dockerignore").read_text().split()
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert users and users[-1] not in ("root", "0")


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql+psycopg://u:secret@h:5432/db", "postgresql+psycopg://u:***@h:5432/db"),
        ("postgresql://:secret@host/db", "postgresql://:***@host/db"),
        (
            "postgresql://u@h/db?password=secret&sslmode=require",
            "postgresql://u@h/db?password=***&sslmode=require",
        ),
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),  # not u:***@ss@h
        ("postgresql://u@h/db?PWD=secret", "postgresql://u@h/db?PWD=***"),
        ("sqlite:///carbrand-search.db", "sqlite:///carbrand-search.db"),
        ("journal:///tmp/study.log", "journal:///tmp/study.log"),
    ],
)
def test_passwords_are_masked(url: str, masked: str) -> None:
    assert mask(url) == masked
    assert "secret" not in mask(url)


def test_example_password_is_refused_before_connecting(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UserError, match=r"example password 'change-me' is refused") as info:
        open_storage("postgresql+psycopg://carbrand:change-me@127.0.0.1:9/carbrand")
    assert str(info.value).startswith("storage postgresql+psycopg://carbrand:***@127.0.0.1:9/")
    # Wherever it is given, in any case: the query, PGPASSWORD (the README's own route).
    for url in (
        "postgresql+psycopg://carbrand@127.0.0.1:9/carbrand?password=Change-Me",
        "postgresql+psycopg://carbrand:CHANGE-ME@127.0.0.1:9/carbrand",
    ):
        with pytest.raises(UserError, match="example password"):
            open_storage(url)
    monkeypatch.setenv("PGPASSWORD", "change-me")
    with pytest.raises(UserError, match="example password"):
        open_storage("postgresql+psycopg://carbrand@127.0.0.1:9/carbrand")


@pytest.mark.postgres
def test_postgres_connections_use_keepalives_and_recycling() -> None:
    storage = open_storage("postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    engine = storage.engine  # type: ignore[attr-defined]
    assert engine.pool._recycle == 1800
    assert PG_CONNECT_ARGS["keepalives"] == 1 and PG_CONNECT_ARGS["tcp_user_timeout"] > 0
    with engine.connect() as conn:  # libpq accepted every setting
        settings = conn.connection.dbapi_connection.info.get_parameters()
    assert settings["keepalives_idle"] == "30"
    assert settings["tcp_user_timeout"] == "60000"
    engine.dispose()


def test_worker_and_run_refuse_a_stored_study_that_no_longer_matches_its_hash(
    demo_root: Path, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study_file = write_study(tmp_path, n_trials=1)
    assert runner.invoke(app, ["create", str(study_file), "--storage", url]).exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=open_storage(url))
    tampered = study_file.read_text().replace("epochs = 2", "epochs = 2000")
    study.set_user_attr(TEXT_ATTR, tampered)
    common = ["--storage", url, "--data", str(demo_root), "--artifacts", str(tmp_path / "a")]
    worker = runner.invoke(app, ["worker", "tiny", *common])
    assert worker.exit_code == 2
    assert "does not match its stored hash" in worker.output
    run = runner.invoke(app, ["run", str(study_file), *common])
    assert run.exit_code == 2 and "does not match its stored hash" in run.output
    assert not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert hashlib.sha256(tampered.encode()).hexdigest() != study.user_attrs[HASH_ATTR]


def test_names_print_as_they_are_never_as_markup_or_control_codes(tmp_path: Path) -> None:
    names = {
        "Mini [cooper]": 2,
        "[link=https:example.invalid]Evil": 2,
        "[bold]Loud": 2,
        "Bad\x1b[31mRed": 2,
    }
    root = write_tree(tmp_path / "d", names)
    result = runner.invoke(app, ["data", "check", str(root)], color=True)
    assert result.exit_code == 0, result.output
    assert "Mini [cooper]" in result.output
    assert "[link=https:example.invalid]Evil" in result.output and "[bold]Loud" in result.output
    assert "\x1b]8;" not in result.output  # no terminal hyperlink
    assert "Bad[31mRed" in result.output  # the escape character itself is dropped
    assert "\x1b[31m" not in result.output


def test_markdown_shows_names_literally() -> None:
    text = md_escape("Mini [cooper](http://x) <b>bold</b> *x*\x07")
    assert text == r"Mini \[cooper\]\(http://x\) &lt;b&gt;bold&lt;/b&gt; \*x\*"


@pytest.fixture
def hostile_tree(tmp_path: Path) -> tuple[Path, list[str]]:
    """A valid tree whose Audi/train folder also holds files no reader should trust."""
    root = write_tree(tmp_path / "d", {"Audi": 2, "Ford": 2})
    folder = root / "train" / "Audi"
    os.mkfifo(folder / "jam.jpg")
    (folder / "zero.jpg").symlink_to("/dev/zero")
    (folder / "gone.jpg").symlink_to(folder / "nowhere.jpg")
    (folder / "loop.jpg").symlink_to(folder / "loop.jpg")
    Image.new("1", (8000, 6000)).save(folder / "huge.png")  # 48 megapixels, a few KB on disk
    Image.new("RGB", (8, 8)).save(folder / "poster.jpg", "EPS")  # Pillow renders EPS with gs
    return root, ["jam.jpg", "zero.jpg", "gone.jpg", "loop.jpg", "huge.png", "poster.jpg"]


def test_fifos_devices_bad_links_and_pixel_bombs_are_named_bad_files(
    hostile_tree: tuple[Path, list[str]],
) -> None:
    root, names = hostile_tree
    signal.alarm(60)  # a regression would block forever on the FIFO or /dev/zero
    try:
        reasons = {}
        for name in names:
            with pytest.raises(BadImage) as info:
                load_image(root / "train" / "Audi" / name)
            reasons[name] = str(info.value)
    finally:
        signal.alarm(0)
    assert (
        "not a regular file" in reasons["jam.jpg"] and "not a regular file" in reasons["zero.jpg"]
    )
    assert "No such file" in reasons["gone.jpg"]
    assert "Too many levels of symbolic links" in reasons["loop.jpg"]
    assert "8000×6000 is more than 40 megapixels" in reasons["huge.png"]
    assert "not a JPEG, PNG, WEBP, BMP, GIF, TIFF image" in reasons["poster.jpg"]
    with Image.open(root / "train" / "Audi" / "poster.jpg") as unrestricted:
        assert unrestricted.format == "EPS"  # what the file is, and what load_image refuses


def test_data_check_skips_and_counts_hostile_files(hostile_tree: tuple[Path, list[str]]) -> None:
    root, names = hostile_tree
    check = [sys.executable, "-m", "carbrand_search", "data", "check", str(root)]
    refused = subprocess.run(check, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.count("\n") == 1 and "(and 5 more)" in refused.stderr
    skipped = subprocess.run([*check, "--skip-bad"], capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0, skipped.stderr
    for name in names:
        assert f"Audi/{name}" in skipped.stdout.replace("\n", "")


def test_a_failed_artifact_write_leaves_no_partial_file(tmp_path: Path) -> None:
    store = artifact_store(str(tmp_path / "artifacts"))

    class DiskFull(io.RawIOBase):
        """Gives 1 MB, then fails as a full disk does."""

        def __init__(self) -> None:
            self.given = 0

        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            if self.given >= 1 << 20:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            buffer[: len(buffer)] = bytes(len(buffer))
            self.given += len(buffer)
            return len(buffer)

        def readable(self) -> bool:
            return True

    with pytest.raises(OSError, match="No space left"):
        store.write("checkpoint.safetensors", io.BufferedReader(DiskFull()))  # type: ignore[arg-type]
    assert list((tmp_path / "artifacts").iterdir()) == []


def test_links_in_the_artifact_store_never_reach_outside_it(tmp_path: Path) -> None:
    store_dir, elsewhere = tmp_path / "art", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "weights").write_bytes(b"not the store's")
    store = artifact_store(str(store_dir))
    (store_dir / "escape").symlink_to(elsewhere)
    (store_dir / "inside").mkdir()
    (store_dir / "inside" / "ok").write_bytes(b"the store's own")
    with pytest.raises(ValueError, match="leads out of the store"):
        store.open_reader("escape/weights")
    with pytest.raises(ArtifactNotFound):
        store.remove("escape/weights")
    with pytest.raises(ValueError, match="leads out of the store"):
        store.write("escape/new", io.BytesIO(b"x"))
    assert sorted(p.name for p in elsewhere.iterdir()) == ["weights"]  # nothing read, gone, added
    with store.open_reader("inside/ok") as f:
        assert f.read() == b"the store's own"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("epochs", "not a list"),
        ("val", {"val_accuracy": 0.5}),  # a metric table with one of its numbers
        ("prune_reason", {"rule": "one-class"}),  # no epoch
        ("resume", {"artifact": "a", "epoch": 1, "batch": 0, "extra": 1}),
        ("teacher", {"study": "t", "trial": "zero", "weights_sha256": "ab"}),
        ("retry_of", True),
    ],
)
def test_a_trial_attribute_changed_by_hand_is_one_line(
    done_copy: Done, key: str, value: object
) -> None:
    """A record with a shape carbrand-search never writes (wrong type, a missing or extra key)
    was a KeyError or TypeError traceback in `run` and `status`."""
    db = sqlite3.connect(done_copy.root / "study.db")
    trial_id = db.execute("SELECT trial_id FROM trials WHERE number = 1").fetchone()[0]
    db.execute("DELETE FROM trial_user_attributes WHERE trial_id = ? AND key = ?", (trial_id, key))
    db.execute(
        "INSERT INTO trial_user_attributes (trial_id, key, value_json) VALUES (?, ?, ?)",
        (trial_id, key, json.dumps(value)),
    )
    db.commit()
    db.close()
    study_file = str(done_copy.root / "tiny.toml")
    commands = (
        ["status", "tiny", *done_copy.store_args()],
        ["run", study_file, "--n-trials", "3", *done_copy.args()],
    )
    for args in commands:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        line = result.output.strip()
        assert "\n" not in line and f"trial 1: its stored {key!r}" in line, line


def test_a_corrupted_sqlite_file_is_one_line_in_status_and_run(done_copy: Done) -> None:
    db = done_copy.root / "study.db"
    for journal in done_copy.root.glob("study.db-*"):  # the WAL may hold the live pages
        journal.unlink()
    data = bytearray(db.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)  # garbage after the header
    db.write_bytes(bytes(data))
    before = db.read_bytes()
    study_file = str(done_copy.root / "tiny.toml")
    for args in (
        ["status", "tiny", *done_copy.store_args()],
        ["run", study_file, *done_copy.args()],
    ):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        line = result.output.strip()
        assert "\n" not in line and "cannot open" in line and "malformed" in line, line
    assert db.read_bytes() == before  # nothing written into it


def test_a_class_name_with_a_newline_stays_on_its_line(done_copy: Done) -> None:
    """Class names come from folder names, which may hold a newline: it split report.md's rows
    and `predict`'s lines in two."""
    assert md_escape("Alfa\nRomeo") == r"Alfa\\nRomeo"
    db = sqlite3.connect(done_copy.root / "study.db")
    rows = db.execute(
        "SELECT trial_id, value_json FROM trial_user_attributes WHERE key = 'classes'"
    )
    for trial_id, value in rows.fetchall():
        names = ["Evil\nBrand: 1.000, Audi", *json.loads(value)[1:]]
        db.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE trial_id = ? AND key = 'classes'",
            (json.dumps(names), trial_id),
        )
    db.commit()
    db.close()
    image = next((done_copy.data / "test").rglob("*.jpg"))
    args = ["predict", str(image), "--study", "tiny", "--top-k", "6", *done_copy.store_args()]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and r"Evil\nBrand: 1.000, Audi" in lines[0], result.output


def test_an_unreachable_mlflow_uri_is_named_with_its_password_masked(
    demo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after backoff
    study_file = write_study(tmp_path, n_trials=1)
    uri = "http://mlflow:hunter2@127.0.0.1:1"
    study_file.write_text(
        study_file.read_text() + f'\n[tracking]\nmlflow = true\nmlflow_uri = "{uri}"\n'
    )
    url = f"sqlite:///{tmp_path / 'study.db'}"
    result = runner.invoke(
        app, ["run", str(study_file), "--storage", url, "--data", str(demo_root)]
    )
    assert result.exit_code == 2, result.output
    assert "mlflow_uri http://mlflow:***@127.0.0.1:1" in result.output
    assert "hunter2" not in result.output
