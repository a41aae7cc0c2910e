"""Local services for the demo and for serving: a Prefect server and a static figure server, both
bound to loopback (127.0.0.1) so nothing is reachable from other machines unless asked.

Used by ``deploy/demo.py`` and ``deploy/serve.py``. Importing this module does not import
prefect: the server runs as a ``prefect server start`` subprocess, and its address is handed
to this process through ``PREFECT_API_URL`` before prefect is imported.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

LOOPBACK = "127.0.0.1"


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
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()


#: what the figure server hands out: figures, nothing else (the folder it serves also holds the
#: Prefect database, workspaces and logs)
FIGURE_SUFFIXES = frozenset({".png", ".svg", ".jpg", ".jpeg"})


class _FigureHandler(SimpleHTTPRequestHandler):
    """Serves figure files under its directory only: no listings, no hidden paths, no other file
    types, no symlinks leading out; everything else is 404."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib signature)
        pass

    def send_head(self):  # noqa: ANN201 - the stdlib's signature
        root = Path(self.directory).resolve()
        path = Path(self.translate_path(self.path))
        relative = path.relative_to(root) if path.is_relative_to(root) else None
        allowed = (relative is not None and path.suffix.lower() in FIGURE_SUFFIXES and path.is_file()
                   and not any(part.startswith(".") for part in relative.parts)
                   and path.resolve().is_relative_to(root))
        if not allowed:
            self.send_error(404, "not a figure")
            return None
        return super().send_head()

    def list_directory(self, path):  # noqa: ANN001, ANN201 - the stdlib's signature
        self.send_error(404, "not a figure")
        return None


@contextmanager
def figure_server(root: str | os.PathLike[str], port: int = 0, host: str = LOOPBACK) -> Iterator[str]:
    """Serve the figures under ``root`` read-only over HTTP on loopback (a thread of this process; only
    image files, see :data:`FIGURE_SUFFIXES`) and point the flows' image artifacts at it
    (``XAIFLOW_FIGURES_URL``/``XAIFLOW_FIGURES_ROOT``, see xaiflow_flows/artifacts.py, restored on exit)."""
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    server = ThreadingHTTPServer((host, port), functools.partial(_FigureHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, name="xaiflow-figures", daemon=True)
    thread.start()
    url = f"http://{host}:{server.server_address[1]}"
    saved = {k: os.environ.get(k) for k in ("XAIFLOW_FIGURES_URL", "XAIFLOW_FIGURES_ROOT")}
    os.environ["XAIFLOW_FIGURES_URL"], os.environ["XAIFLOW_FIGURES_ROOT"] = url, str(root)
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
