"""Local services for the demo and for serving: a Prefect server and a static figure server, both
bound to loopback (127.0.0.1) so nothing is reachable from other machines unless asked.

The figure server listens on a fixed, configured port (:data:`FIGURES_PORT`, ``$XAIFLOW_FIGURES_PORT``)
and serves figures and report pages by their absolute path, only under its report/figure folders: the
image artifacts of a run hold such URLs in the Prefect database, so they load again whenever a figure
server runs on that port, after any restart.

Used by ``deploy/demo.py`` and ``deploy/serve.py``. Importing this module does not import
prefect: the server runs as a ``prefect server start`` subprocess (in a process group of its own,
stopped as a group), and its address is handed to this process through ``PREFECT_API_URL`` before
prefect is imported.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import unquote, urlsplit

LOOPBACK = "127.0.0.1"


def stop_on_sigterm() -> None:
    """SIGTERM (``kill``, a service manager, a CI timeout) raises KeyboardInterrupt in the main thread
    like Ctrl-C, so every ``with`` block unwinds and stops what it started instead of leaving it running."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def free_port(host: str = LOOPBACK) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prefect_executable() -> str:
    """The ``prefect`` command of this interpreter's environment."""
    local = Path(sys.executable).with_name("prefect")
    found = str(local) if local.is_file() else shutil.which("prefect")
    if not found:
        raise RuntimeError("the `prefect` command is not installed; run `make setup` (installs xaiflow[flows])")
    return found


def wait_healthy(api_url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Poll ``<api>/health`` until it answers 200; fail early if the server process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with code {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {api_url} not healthy after {timeout:.0f} s")


@contextmanager
def prefect_server(port: int | None = None, home: str | os.PathLike[str] | None = None, host: str = LOOPBACK,
                   timeout: float = 120.0, log: str | os.PathLike[str] | None = None,
                   database_url: str | None = None) -> Iterator[str]:
    """Start ``prefect server start`` on ``host:port`` (a free loopback port by default), wait for its
    health check, set ``PREFECT_API_URL`` for this process and its children, yield the UI URL; stop
    the server on exit. ``home``: its ``PREFECT_HOME`` (database, logs); ``database_url``: a
    SQLAlchemy URL of another database than SQLite in ``home`` (PostgreSQL: deploy/postgres.py)."""
    port = port or free_port(host)
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_SERVER_API_HOST": host,
           "PREFECT_SERVER_API_PORT": str(port), "PREFECT_UI_API_URL": f"http://{host}:{port}/api"}
    env.pop("PREFECT_API_URL", None)
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    if home is not None:
        Path(home).mkdir(parents=True, exist_ok=True)
        env["PREFECT_HOME"] = str(Path(home).resolve())
    out = open(log, "ab") if log else subprocess.DEVNULL
    proc = subprocess.Popen([prefect_executable(), "server", "start", "--host", host, "--port", str(port)],
                            env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    api = f"http://{host}:{port}/api"
    try:
        wait_healthy(api, timeout, proc)
        os.environ["PREFECT_API_URL"] = api
        if env.get("PREFECT_SERVER_API_AUTH_STRING"):  # a server with auth: this process's clients log in
            os.environ.setdefault("PREFECT_API_AUTH_STRING", env["PREFECT_SERVER_API_AUTH_STRING"])
        if home is not None:
            os.environ["PREFECT_HOME"] = env["PREFECT_HOME"]
        yield f"http://{host}:{port}"
    finally:
        handlers = sys.modules.get("prefect.logging.handlers")
        if handlers is not None:  # flows of this process logged to the server: send what is queued first
            handlers.APILogWorker.drain_all(timeout=5)
        stop_group(proc)
        if log:
            out.close()


def stop_group(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM to the process group of ``proc`` (started with ``start_new_session``: the server and
    every process it started), then SIGKILL to whatever of the group is left after ``timeout``."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:  # the group is gone
        pass


#: the figure server's port unless ``$XAIFLOW_FIGURES_PORT`` says otherwise: fixed, so the image
#: artifacts of earlier runs (URLs stored in the Prefect database) still load after a restart
FIGURES_PORT = 4210
FIGURES_PORT_VAR = "XAIFLOW_FIGURES_PORT"
#: what the figure server hands out: figures and the reports' pages, nothing else
FIGURE_SUFFIXES = frozenset({".png", ".svg", ".jpg", ".jpeg", ".html"})


def figures_port() -> int:
    """The configured figure server port (``$XAIFLOW_FIGURES_PORT``, default :data:`FIGURES_PORT`)."""
    value = os.environ.get(FIGURES_PORT_VAR, str(FIGURES_PORT))
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ValueError(f"{FIGURES_PORT_VAR}={value!r} is not a port number (1-65535)")
    return int(value)


def figure_roots(workspace: str | os.PathLike[str]) -> list[Path]:
    """The folders of a workspace's reports and figures (``ws.zarr`` -> ``ws.reports``, ``ws.figures``), which
    the figure server serves for it."""
    from xaiflow.store import local_sibling

    return [Path(local_sibling(workspace, suffix)).resolve() for suffix in (".reports", ".figures")]


class _FigureHandler(SimpleHTTPRequestHandler):
    """Serves ``GET /<absolute path>`` of a figure (or report page) under one of its roots: no
    listings, no hidden paths, no other file types, no symlinks leading out; everything else is 404.
    The URL holds the absolute path, so it names the same file whichever roots a later server has."""

    roots: tuple[Path, ...] = ()
    server_version = "xaiflow-figures"

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass

    def _allowed(self) -> Path | None:
        path = Path(posixpath.normpath(unquote(urlsplit(self.path).path)))
        if not path.is_absolute() or path.suffix.lower() not in FIGURE_SUFFIXES or not path.is_file():
            return None
        for root in self.roots:
            if path.is_relative_to(root) and path.resolve().is_relative_to(root) and \
                    not any(part.startswith(".") for part in path.relative_to(root).parts):
                return path.resolve()
        return None

    def send_head(self):  # noqa: ANN201 - the stdlib's signature
        self._target = self._allowed()
        if self._target is None:
            self.send_error(404, "not a figure")
            return None
        return super().send_head()

    def translate_path(self, path: str) -> str:
        return str(self._target)

    def list_directory(self, path):  # noqa: ANN001, ANN201 - the stdlib's signature
        self.send_error(404, "not a figure")
        return None


@contextmanager
def figure_server(roots: Iterable[str | os.PathLike[str]], port: int | None = None,
                  host: str = LOOPBACK) -> Iterator[str]:
    """Serve the figures and report pages under ``roots`` read-only over HTTP on ``host:port`` (default
    :func:`figures_port`; a thread of this process; only :data:`FIGURE_SUFFIXES`) and point the flows'
    image artifacts and report links at it (``XAIFLOW_FIGURES_URL``/``XAIFLOW_FIGURES_ROOT``, see
    xaiflow_flows/artifacts.py, restored on exit). A port in use is an OSError naming the setting."""
    roots = tuple(Path(r).resolve() for r in roots)
    for root in roots:
        root.mkdir(parents=True, exist_ok=True)
    port = figures_port() if port is None else port
    handler = type("FigureHandler", (_FigureHandler,), {"roots": roots})
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise OSError(e.errno, f"cannot serve figures on {host}:{port} ({e.strerror}): another xaiflow demo or "
                               f"serve.py running? Stop it, or set {FIGURES_PORT_VAR} to a free port") from None
    thread = threading.Thread(target=server.serve_forever, name="xaiflow-figures", daemon=True)
    thread.start()
    url = f"http://{host}:{server.server_address[1]}"
    saved = {k: os.environ.get(k) for k in ("XAIFLOW_FIGURES_URL", "XAIFLOW_FIGURES_ROOT")}
    os.environ["XAIFLOW_FIGURES_URL"] = url
    os.environ["XAIFLOW_FIGURES_ROOT"] = os.pathsep.join(map(str, roots))
    try:
        yield url
    finally:
        server.shutdown()
        server.server_close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
