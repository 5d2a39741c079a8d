"""Optuna's gRPC storage proxy: one process holds the database connections for many workers,
which reach it at grpc://HOST:PORT.

Two things Optuna's proxy lacks are added here, each on a private part of Optuna that has no
public counterpart (the servicer and the client's channel):
- **Heartbeats.** Its client is a plain `BaseStorage`, so a worker behind it could never be found
  dead. Our client sends each heartbeat as a trial system attribute with a reserved key; the
  proxy writes it as a real heartbeat row instead of storing it, and sweeps stale trials over its
  own direct connection (failed and re-queued as a direct worker would), every heartbeat.
- **A token.** Its channel has no authentication. When CARBRAND_PROXY_TOKEN is set, the proxy
  answers only calls that carry it; it refuses to listen beyond loopback without one.
"""

import hmac
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc
from optuna.storages._grpc.client import GrpcClientCache, create_insecure_channel
from optuna.storages._grpc.servicer import OptunaStorageProxyService
from optuna.storages._heartbeat import BaseHeartbeat

from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError, first_line
from carbrand_search.core.network import PORTS, check_port, is_loopback
from carbrand_search.search.storage import PROXY_SCHEME, database_unreachable, mask

TOKEN_ENV = "CARBRAND_PROXY_TOKEN"
BEAT_KEY = "carbrand:heartbeat"  # never stored: the proxy turns it into a heartbeat row
CONNECT_TIMEOUT_S = 10
SERVER_THREADS = 32  # concurrent calls the proxy serves; each holds at most one connection


@dataclass(frozen=True)
class ProxyAddress:
    host: str
    port: int


def parse(url: str) -> ProxyAddress:
    """grpc://HOST:PORT → its address; anything else a one-line UserError."""
    host, colon, port = url.removeprefix(PROXY_SCHEME).rpartition(":")
    if not url.startswith(PROXY_SCHEME) or not colon or not host or "/" in host:
        raise UserError(f"storage {url}: use grpc://HOST:PORT for a `carbrand-search proxy`")
    if not port.isdigit() or int(port) not in PORTS:
        raise UserError(f"storage {url}: the port must be a number in [1, 65535], got {port!r}")
    return ProxyAddress(host.strip("[]"), int(port))


def _token() -> str | None:
    return os.environ.get(TOKEN_ENV) or None


class _Details(NamedTuple):
    method: str
    timeout: float | None
    metadata: Any
    credentials: Any
    wait_for_ready: bool | None
    compression: Any


class _SendToken(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def intercept_unary_unary(self, continuation: Callable, details: Any, request: Any) -> Any:
        metadata = [*(details.metadata or ()), self.header]
        sent = _Details(
            details.method, details.timeout, metadata, details.credentials,
            details.wait_for_ready, details.compression,
        )  # fmt: skip
        return continuation(sent, request)


class BeatingProxyClient(GrpcStorageProxy, BaseHeartbeat):
    """Optuna's proxy client with heartbeats relayed through the proxy, and the token sent when
    one is set. It finds no stale trials itself: the proxy sweeps them."""

    def __init__(self, address: ProxyAddress, heartbeat_s: int | None, token: str | None):
        self._heartbeat_s, self._token_value = heartbeat_s, token
        super().__init__(host=address.host, port=address.port)

    def _setup(self) -> None:  # Optuna's, with the token interceptor on the channel
        channel = create_insecure_channel(self._host, self._port)
        if self._token_value:
            channel = grpc.intercept_channel(channel, _SendToken(self._token_value))
        self._channel = channel
        self._stub = api_pb2_grpc.StorageServiceStub(channel)
        self._cache = GrpcClientCache(self._stub)

    def record_heartbeat(self, trial_id: int) -> None:
        # The trial may have ended (or been failed as stale) since the last beat. A beat the
        # proxy cannot take (it or its database restarting) is retried at the next: Optuna's
        # heartbeat thread would end at the first error, and the trial be swept while it runs.
        try:
            self.set_trial_system_attr(trial_id, BEAT_KEY, True)
        except UpdateFinishedTrialError:
            pass
        except Exception as e:
            if not database_unreachable(e):
                raise

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        return []

    def get_heartbeat_interval(self) -> int | None:
        return self._heartbeat_s

    def get_heartbeat_stale_trial_callback(self) -> None:
        return None


def connect(url: str, heartbeat_s: int | None) -> BeatingProxyClient:
    """A client of the proxy at `url`, checked: it answers, and takes our token."""
    address = parse(url)
    client = BeatingProxyClient(address, heartbeat_s, _token())
    try:
        client.wait_server_ready(timeout=CONNECT_TIMEOUT_S)
        client.get_study_id_from_name("")  # the cheapest call that needs the token
    except KeyError:
        return client  # no study has that name: the proxy answered
    except ConnectionError:
        raise UserError(
            f"storage {url}: no proxy answers there (start one: carbrand-search proxy)"
        ) from None
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.UNAUTHENTICATED:
            raise UserError(
                f"storage {url}: the proxy refused the call; set {TOKEN_ENV} to its token"
            ) from None
        raise UserError(f"storage {url}: the proxy failed: {e.details()}") from None
    return client


class _Relay(OptunaStorageProxyService):  # type: ignore[misc]
    """Optuna's servicer, with BEAT_KEY writes made heartbeats instead of attributes."""

    def SetTrialSystemAttribute(self, request: Any, context: grpc.ServicerContext) -> Any:
        if request.key != BEAT_KEY:
            return super().SetTrialSystemAttribute(request, context)
        self._backend.record_heartbeat(request.trial_id)  # type: ignore[attr-defined]
        return api_pb2.SetTrialSystemAttributeReply()


class _CheckToken(grpc.ServerInterceptor):  # type: ignore[misc]
    """Refuses (UNAUTHENTICATED) every call that does not carry the token."""

    def __init__(self, token: str) -> None:
        self.expected = f"Bearer {token}".encode()

        def deny(_request: Any, context: grpc.ServicerContext) -> None:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, f"missing or wrong {TOKEN_ENV}")

        self.denied = grpc.unary_unary_rpc_method_handler(deny)

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        given = dict(details.invocation_metadata or ()).get("authorization", "")
        if hmac.compare_digest(str(given).encode(), self.expected):
            return continuation(details)
        return self.denied


class _OutageAsUnavailable(grpc.ServerInterceptor):  # type: ignore[misc]
    """A call that failed because the database went away (a restart, cut connections) answers
    UNAVAILABLE, which workers wait out as they wait out the database itself; Optuna's servicer
    would let it out as UNKNOWN, which reads as a bug."""

    def intercept_service(self, continuation: Callable, details: Any) -> Any:
        handler = continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        call = handler.unary_unary

        def guarded(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                return call(request, context)
            except Exception as e:
                if not database_unreachable(e):
                    raise
                context.abort(
                    grpc.StatusCode.UNAVAILABLE, f"database unreachable: {first_line(e)}"
                )

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def check_listen(host: str, allow_remote: bool, token: str | None) -> None:
    """Loopback only, unless asked; and then only with a token."""
    if is_loopback(host):
        return
    if not allow_remote:
        raise UserError(
            f"--host {host}: the proxy listens on loopback only unless --allow-remote is given "
            "(its channel has no TLS; see the README's many-machines section)"
        )
    if token is None:
        raise UserError(
            f"--host {host}: a proxy beyond loopback needs {TOKEN_ENV} set to a secret token "
            "that its workers share"
        )


@dataclass(frozen=True)
class ProxyOptions:
    storage: str  # the database URL the proxy serves
    host: str = "127.0.0.1"
    port: int = defaults.PROXY_PORT
    heartbeat_s: int = defaults.HEARTBEAT_S
    allow_remote: bool = False


def serve(
    options: ProxyOptions, say: Callable[[str], None], stop: threading.Event | None = None
) -> None:
    """Serve `options.storage` at grpc://HOST:PORT until `stop` is set or the process is told to
    stop; stale trials of every study are swept each heartbeat."""
    from carbrand_search.search.retry import open_for_work

    check_port(options.port)
    token = _token()
    check_listen(options.host, options.allow_remote, token)
    if options.storage.startswith((PROXY_SCHEME, "journal://")):
        raise UserError(
            f"--storage {mask(options.storage)}: the proxy serves a database "
            "(sqlite:///FILE or postgresql+psycopg://…)"
        )
    # get_storage adds Optuna's in-process cache, as Optuna's proxy documentation asks.
    storage = optuna.storages.get_storage(open_for_work(options.storage, options.heartbeat_s))
    server = grpc.server(
        ThreadPoolExecutor(max_workers=SERVER_THREADS),
        interceptors=[*([_CheckToken(token)] if token else []), _OutageAsUnavailable()],
    )
    api_pb2_grpc.add_StorageServiceServicer_to_server(_Relay(storage), server)
    bound = options.host if ":" not in options.host else f"[{options.host}]"
    if server.add_insecure_port(f"{bound}:{options.port}") == 0:
        raise UserError(f"--port {options.port}: cannot listen on {options.host} (in use?)")
    server.start()
    say(
        f"proxy for {mask(options.storage)} at {PROXY_SCHEME}{options.host}:{options.port}"
        f"{' (token required)' if token else ''}; stale trials swept every "
        f"{options.heartbeat_s} s"
    )
    stop = stop or threading.Event()
    sweeper = _Sweeper(storage, options.heartbeat_s, say, stop)
    sweeper.start()
    try:
        # The sweeps run in their own thread, so that a stop signal (which Python delivers to
        # this, the main thread) lands here, idle, and never between failing a stale trial and
        # queueing its retry: the sweep under way finishes first.
        stop.wait()
    finally:
        stop.set()
        sweeper.join()
        server.stop(grace=2).wait()
    sweeper.raise_error()


class _Sweeper(threading.Thread):
    """Sweeps stale trials every heartbeat until `stop` is set. An error other than the
    database being unreachable ends it, sets `stop`, and is raised again by `raise_error`."""

    def __init__(
        self,
        storage: optuna.storages.BaseStorage,
        heartbeat_s: int,
        say: Callable[[str], None],
        stop: threading.Event,
    ) -> None:
        super().__init__(name="carbrand-sweeper", daemon=True)
        self.storage, self.heartbeat_s, self.say, self.stop = storage, heartbeat_s, say, stop
        self.error: BaseException | None = None

    def run(self) -> None:
        # During an outage the workers' heartbeats could not land either: from when the
        # database answers again, they get a grace period to beat before any trial counts as
        # stale.
        grace_s = self.heartbeat_s * defaults.GRACE_FACTOR
        down, held_until = False, 0.0
        try:
            while not self.stop.wait(self.heartbeat_s):
                if down:
                    if reachable(self.storage):
                        down, held_until = False, time.monotonic() + grace_s
                elif time.monotonic() >= held_until:
                    down = not sweep_stale(self.storage, self.say)
        except BaseException as e:  # handed to the main thread, which reports it
            self.error = e
            self.stop.set()

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def reachable(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the database answers now."""
    try:
        storage.get_all_studies()
    except Exception as e:
        if not database_unreachable(e):
            raise
        return False
    return True


def sweep_stale(storage: optuna.storages.BaseStorage, say: Callable[[str], None]) -> bool:
    """Fail and re-queue every study's trials whose heartbeat lapsed (Optuna's own rule and
    retry callback, as a direct worker applies them before each trial); False when the
    database could not be reached."""
    try:
        for summary in storage.get_all_studies():
            study = optuna.load_study(study_name=summary.study_name, storage=storage)
            optuna.storages.fail_stale_trials(study)
    except Exception as e:
        if not database_unreachable(e):
            raise
        say(f"database unreachable ({first_line(e, 160)}); sweeping again later")
        return False
    return True
