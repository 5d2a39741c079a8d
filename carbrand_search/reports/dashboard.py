"""optuna-dashboard on a study's storage and artifact store, refusing requests whose Host header
is not this machine's when it listens on loopback only."""

from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import optuna

from carbrand_search.core.network import is_loopback
from carbrand_search.search.storage import ArtifactStore

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def host_name(header: str) -> str:
    """The name part of a Host header: `127.0.0.1:8080` → `127.0.0.1`, `[::1]:80` → `[::1]`."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class LoopbackHostsOnly:
    """WSGI middleware: a 403 for a Host header that is not a loopback name. A page on another
    site can point its own name at 127.0.0.1 (DNS rebinding) and then call the dashboard's API
    from the browser, which has no login; its requests still carry that site's name as Host."""

    def __init__(self, app: WSGIApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        if host_name(environ.get("HTTP_HOST", "")).lower() in LOOPBACK_NAMES:
            return self.app(environ, start_response)
        start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"this dashboard answers to localhost and 127.0.0.1 only\n"]


def serve(
    storage: optuna.storages.BaseStorage, artifacts: ArtifactStore, host: str, port: int
) -> None:
    """Serve optuna-dashboard until interrupted (the standard library's WSGI server, as
    optuna-dashboard's own `run_server` uses)."""
    import optuna_dashboard

    app: WSGIApp = optuna_dashboard.wsgi(storage, artifact_store=artifacts)
    if is_loopback(host):
        app = LoopbackHostsOnly(app)
    server: WSGIServer = make_server(host, port, app, handler_class=_QuietHandler)
    with server:
        server.serve_forever()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: the dashboard polls every few seconds."""
