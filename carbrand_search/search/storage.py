"""Storage URL → Optuna storage (SQLite, PostgreSQL, journal file, or a gRPC proxy's client),
with heartbeat and retry; artifact store root → Optuna artifact store. With proxy.py, the only
modules that use Optuna's private parts, each where Optuna has no public API: here the
`ArtifactStore` protocol's name (everyone else imports it from here) and its RDB trial table,
for counting trials without loading them."""

import contextlib
import os
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import optuna
import sqlalchemy
from optuna.artifacts import Backoff, Boto3ArtifactStore, FileSystemArtifactStore
from optuna.artifacts._protocol import ArtifactStore as ArtifactStore  # no public name
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # no public name
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError, first_line

# Heartbeats and their retry callback are marked experimental by Optuna; we rely on them knowingly.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

POOL_RECYCLE_S = 1800
# libpq settings: give up connecting after 10 s; TCP keepalives find a dead peer within about a
# minute; tcp_user_timeout (ms) bounds how long unacknowledged data may wait, so a half-open
# connection cannot block a worker for the kernel's default of many minutes.
PG_CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 60_000,
}


PROXY_SCHEME = "grpc://"  # a `carbrand-search proxy` (search/proxy.py)
EXAMPLE_PASSWORDS = frozenset({"change-me"})  # shipped in an old .env.example
SECRET_QUERY_KEYS = frozenset({"password", "passwd", "pwd", "sslpassword"})
# Tries at creating the tables of a fresh database that other processes are creating too: the
# tables, then the schema-version row, can each be taken by another process first.
TABLE_RACE_TRIES = 3


def mask(url: str) -> str:
    """The URL with its password (in the user part or the query) replaced by ***. The user
    part ends at the last "@" before the host: a password with an unencoded "@" in it is
    masked whole, not cut at its first "@"."""
    base, question, query = url.partition("?")
    scheme, slashes, rest = base.partition("://")
    if slashes and not rest.startswith("/") and "@" in rest:
        userinfo, host = rest.rsplit("@", 1)
        user, colon, _ = userinfo.partition(":")
        rest = f"{user}{colon}{'***' if colon else ''}@{host}"
    if query:
        query = "&".join(
            f"{part.split('=', 1)[0]}=***"
            if part.split("=", 1)[0].lower() in SECRET_QUERY_KEYS
            else part
            for part in query.split("&")
        )
    return f"{scheme}{slashes}{rest}{question}{query}"


def _parsed(url: str) -> sqlalchemy.engine.URL:
    rest = url.partition("?")[0].partition("://")[2]
    if rest.count("@") > 1:  # SQLAlchemy would take the password's tail for the host
        raise UserError(
            f"storage {mask(url)}: the password holds an unencoded '@'; write it as %40, or "
            "leave it out of the URL and set PGPASSWORD"
        )
    try:
        return sqlalchemy.engine.make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:  # a port that is not a number
        raise UserError(
            f"storage {mask(url)}: not a valid database URL ({first_line(e)})"
        ) from None


def _refuse_example_password(url: sqlalchemy.engine.URL) -> None:
    """The example password is refused wherever it is given: the URL, its query, PGPASSWORD
    (which libpq reads), in any case."""
    given: list[object] = [url.password, os.environ.get("PGPASSWORD")]
    for key, value in url.query.items():
        if key.lower() in SECRET_QUERY_KEYS:
            given += [value] if isinstance(value, str) else list(value)
    for password in given:
        if isinstance(password, str) and password.strip().lower() in EXAMPLE_PASSWORDS:
            raise UserError(
                f"storage {mask(url.render_as_string(hide_password=False))}: the example "
                f"password {password!r} is refused; set a password of your own"
            )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers (status, dashboard) work while workers write; the busy timeout makes
    # writers wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
    # The driver's own transactions start only at the first write, after Optuna's
    # SELECT … FOR UPDATE (which SQLite ignores) has read the row: two workers could both see a
    # queued trial as WAITING and both run it. SQLAlchemy's recipe: the driver starts none, and
    # every transaction begins IMMEDIATE, holding SQLite's write lock from its first read.
    dbapi_connection.isolation_level = None


def _sqlite_begin_immediate(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def database_unreachable(error: BaseException) -> bool:
    """Whether `error` comes from the database going away (a restart, cut connections): what
    workers and `run` wait out. Optuna wraps the driver's error in StorageInternalError, and a
    tell that fails that way makes Optuna's loop raise an error whose context it is."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError):
            return True
        if isinstance(seen, sqlalchemy.exc.DBAPIError) and seen.connection_invalidated:
            return True
        if _proxy_unavailable(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _proxy_unavailable(error: BaseException) -> bool:
    """A gRPC storage proxy that does not answer (restarting, or the network is cut)."""
    grpc = sys.modules.get("grpc")  # loaded only where a proxy is used
    return (
        grpc is not None
        and isinstance(error, grpc.RpcError)
        and error.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    )


class _SteadyHeartbeats(RDBStorage):
    """RDBStorage whose heartbeat survives the database going away. Optuna's heartbeat thread
    ends at the first error, so after a restart a trial that is still training would send no
    more heartbeats and be failed as stale while it runs; a missed beat is retried at the next."""

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except Exception as e:
            if not database_unreachable(e):
                raise


def _created(url: str, engine_kwargs: dict[str, Any], heartbeat: dict[str, Any]) -> RDBStorage:
    """RDBStorage, which creates Optuna's tables on a fresh database. Processes opening one
    at once (the first `run`s, workers on many machines) race to create them: the losers fail
    on a name the winner took, and find the tables there when they try again."""
    for attempt in range(1, TABLE_RACE_TRIES):
        try:
            return _SteadyHeartbeats(url, engine_kwargs=engine_kwargs, **heartbeat)
        except sqlalchemy.exc.DBAPIError as e:
            if not _lost_table_race(e):
                raise
            time.sleep(0.5 * attempt)
    return _SteadyHeartbeats(url, engine_kwargs=engine_kwargs, **heartbeat)


def _lost_table_race(error: sqlalchemy.exc.DBAPIError) -> bool:
    """PostgreSQL says UniqueViolation (an IntegrityError); SQLite "table … already exists"."""
    if isinstance(error, sqlalchemy.exc.IntegrityError):
        return True
    return isinstance(error, sqlalchemy.exc.OperationalError) and "already exists" in str(
        error.orig
    )


def open_storage(
    url: str, heartbeat_s: int | None = None, stale_retries: int = 0
) -> optuna.storages.BaseStorage:
    """One storage object per process, from a URL; problems are a one-line UserError.

    With `heartbeat_s`, running trials send a heartbeat that often, and a trial silent for
    `defaults.GRACE_FACTOR` heartbeats (its worker died) is marked FAIL and re-queued with its
    parameters, at most `stale_retries` times in a row (retry.open_for_work says how often).
    """
    if url.startswith(PROXY_SCHEME):
        from carbrand_search.search.proxy import connect  # grpc loads only for proxy users

        return connect(url, heartbeat_s)
    if url.startswith("journal://"):
        path = storage_file(url)
        assert path is not None
        if not path.parent.is_dir():
            raise UserError(f"storage {url}: folder {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path)))
    if not (url.startswith("sqlite:///") or url.startswith("postgresql")):
        raise UserError(
            f"storage {mask(url)}: unsupported URL; use sqlite:///FILE, "
            "postgresql+psycopg://USER@HOST/DB (the password in PGPASSWORD or ~/.pgpass), "
            "journal:///FILE or grpc://HOST:PORT"
        )
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        engine_kwargs["connect_args"] = {"timeout": 60}
    else:
        _refuse_example_password(_parsed(url))
        engine_kwargs.update(
            pool_pre_ping=True,
            # A connection idle behind a NAT or firewall for long can be dropped silently;
            # recycling it first means no worker ever waits on a half-open one.
            pool_recycle=POOL_RECYCLE_S,
            connect_args=PG_CONNECT_ARGS,
        )
    heartbeat_kwargs: dict[str, Any] = {}
    if heartbeat_s is not None:
        heartbeat_kwargs = {
            "heartbeat_interval": heartbeat_s,
            "grace_period": heartbeat_s * defaults.GRACE_FACTOR,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(
                max_retry=stale_retries
            ),
        }
    try:
        storage = _created(url, engine_kwargs, heartbeat_kwargs)
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError) as e:
        # Driver messages may quote the URL they were given, password and all.
        first = first_line(e).replace(url, mask(url))
        raise UserError(f"storage {mask(url)}: cannot open: {first}") from e
    if url.startswith("sqlite"):
        sqlalchemy.event.listen(storage.engine, "connect", _sqlite_pragmas)
        sqlalchemy.event.listen(storage.engine, "begin", _sqlite_begin_immediate)
        storage.engine.dispose()  # later connections are made with the pragmas
    return storage


def storage_file(url: str) -> Path | None:
    """The file a SQLite or journal storage URL names (`sqlite:///x.db` is ./x.db, Optuna's
    `journal:///x.log` is /x.log); None for a server."""
    for scheme in ("sqlite:///", "journal://"):
        if url.startswith(scheme):
            return Path(url.removeprefix(scheme).split("?", 1)[0])
    return None


def open_existing(url: str) -> optuna.storages.BaseStorage:
    """`open_storage` for commands that read a study (status, worker, report …): a SQLite or
    journal file that is not there is a one-line error, and no empty file is left behind."""
    path = storage_file(url)
    if path is not None and not path.is_file():
        raise UserError(
            f"storage {url}: {path} does not exist (create a study there with `run` or "
            "`create`, or give --storage)"
        )
    return open_storage(url)


def finds_stale(storage: optuna.storages.BaseStorage) -> bool:
    """Whether trials on `storage` send heartbeats, so that a dead worker's trial is failed and
    queued again (by the workers, or by the proxy they reach it through)."""
    return isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval() is not None


def close(storage: optuna.storages.BaseStorage) -> None:
    """Let go of `storage`'s connections (pooled database connections, a proxy's channel)."""
    if isinstance(storage, RDBStorage):
        storage.engine.dispose()
    elif isinstance(storage, optuna.storages.GrpcStorageProxy):
        storage.close()


class RemoveOnceBackoff(Backoff):
    """Optuna's Backoff, except that a removal that succeeds is not repeated: Optuna 5's
    `Backoff.remove` goes on deleting and sleeping through all its retries (31 s per removal
    with the delays below; optuna/optuna#6843), and every trial removes its resume point."""

    def __init__(self, backend: ArtifactStore, **delays: Any) -> None:
        super().__init__(backend, **delays)
        self.backend = backend

    def remove(self, artifact_id: str) -> None:
        try:
            self.backend.remove(artifact_id)
        except ArtifactNotFound:
            raise
        except Exception:  # what Optuna's retries are for; S3 deletes are idempotent
            super().remove(artifact_id)


def artifact_store(root: str) -> ArtifactStore:
    """`s3://bucket` (S3-compatible, for many hosts) or a local folder, checked writable."""
    if root.startswith("s3://"):
        bucket, _, prefix = root.removeprefix("s3://").partition("/")
        if not bucket or prefix.strip("/"):
            raise UserError(
                f"artifacts {root}: use s3://BUCKET (Optuna's Boto3ArtifactStore keeps artifacts "
                "at the bucket root; give carbrand-search a bucket of its own)"
            )
        try:
            import boto3
        except ImportError:
            raise UserError(
                "artifacts on S3 need boto3: pip install 'carbrand-search[s3]'"
            ) from None
        # Endpoint and credentials: the usual AWS_* variables (AWS_ENDPOINT_URL for MinIO).
        # Optuna's Backoff retries a failed read or write (1 s doubling to 30 s, 5 tries), so
        # one S3 hiccup does not fail a trial.
        return RemoveOnceBackoff(
            Boto3ArtifactStore(bucket, client=boto3.client("s3")),
            max_retries=5,
            min_delay=1.0,
            max_delay=30.0,
        )
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-check-"):
            pass
    except OSError as e:
        raise UserError(f"artifacts {root}: not a writable folder ({e.strerror or e})") from e
    return WholeFileArtifactStore(str(path))


class WholeFileArtifactStore(FileSystemArtifactStore):
    """Optuna's file store, less the partial files a failed write (a full disk) leaves, and
    confined to its folder: Optuna checks the id's path but follows links, so a link inside the
    store (`art/escape -> /elsewhere`) would let a read or a removal reach outside it."""

    def _outside(self, artifact_id: str) -> bool:
        base = Path(self._base_path).resolve()
        return not (base / artifact_id).resolve().is_relative_to(base)

    def open_reader(self, artifact_id: str) -> BinaryIO:
        if self._outside(artifact_id):
            raise ValueError(f"artifact {artifact_id} leads out of the store through a link")
        return super().open_reader(artifact_id)

    def remove(self, artifact_id: str) -> None:
        if self._outside(artifact_id):
            # Nothing outside the store is deleted; for the store the artifact is gone.
            raise ArtifactNotFound(f"artifact {artifact_id} leads out of the store; not removed")
        super().remove(artifact_id)

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        if self._outside(artifact_id):
            raise ValueError(f"artifact {artifact_id} leads out of the store through a link")
        try:
            super().write(artifact_id, content_body)
        except BaseException:
            with contextlib.suppress(OSError, ValueError, ArtifactNotFound):
                self.remove(artifact_id)
            raise


def trial_counts(storage: optuna.storages.BaseStorage, study_id: int) -> Counter[TrialState]:
    """Trials per state. On SQLite and PostgreSQL one COUNT query on Optuna's trial table (its
    API can only load every trial, about 0.7 ms each); on a journal file by reading them."""
    if isinstance(storage, RDBStorage):
        from optuna.storages._rdb.models import TrialModel

        query = (
            sqlalchemy.select(TrialModel.state, sqlalchemy.func.count())
            .where(TrialModel.study_id == study_id)
            .group_by(TrialModel.state)
        )
        with storage.engine.connect() as connection:
            return Counter({TrialState(state): n for state, n in connection.execute(query)})
    return Counter(t.state for t in storage.get_all_trials(study_id, deepcopy=False))


def store_size(root: str) -> tuple[int, int]:
    """(files, bytes) held by the artifact store at `root`: a folder, or an S3 bucket."""
    if root.startswith("s3://"):
        import boto3

        pages = boto3.client("s3").get_paginator("list_objects_v2")
        sizes = [o["Size"] for page in pages.paginate(Bucket=root.removeprefix("s3://").strip("/"))
                 for o in page.get("Contents", [])]  # fmt: skip
    else:
        sizes = [p.stat().st_size for p in Path(root).rglob("*") if p.is_file()]
    return len(sizes), sum(sizes)
