"""The annotation page's HTTP server: standard library only, loopback only, every request authenticated.

Authentication follows the Prefect server's: with ``$XAIFLOW_ANNOTATE_AUTH_STRING`` set
(``user:password``, like ``PREFECT_SERVER_API_AUTH_STRING``) every request needs those HTTP basic-auth
credentials; without it a random token is made at each start and printed in the page's URL
(``?token=...``). Opening that URL once stores the token in an HttpOnly, SameSite=Strict cookie (named
after the port, so two sessions side by side keep theirs) and redirects to the bare page, so the token
does not stay in the address bar or the history. A request without valid credentials gets 401/403 and
no data.

Beyond that: the server binds 127.0.0.1 only and answers only requests addressed to it by that name or
``localhost`` (a DNS-rebinding page cannot reach it); a cross-site POST is refused (``Origin`` must
be the page's own); POST bodies are JSON only and limited to what a region of the image's size takes;
images are addressed by their position in the session's order (never a path); the page's assets are a
fixed set of package files.

Every failure is answered with a JSON ``{"error": message}`` the page shows, never a dropped
connection: bad input 400, an unknown route or image 404, annotations or images that no longer
match (re-ingested: :class:`~xaiflow.annotations.StaleAnnotationsError`) and other library errors
409, a group busy beyond the lock wait 503 (with ``Retry-After``), anything unexpected 500 (logged).
A connection silent for :data:`IDLE_TIMEOUT_SECONDS` is closed.

Routes: ``GET /`` (the page), ``GET /static/<asset>``, ``GET /api/state[?after=N]`` (classes, image
shape, progress, next position), ``GET /api/image/<N>.png``, ``POST /api/submit`` (see
:meth:`AnnotationHandler.submit`).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import math
import os
import re
import secrets
import threading
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from xaiflow.annotate.session import AnnotationSession
from xaiflow.annotations import AnnotationError, StaleAnnotationsError
from xaiflow.errors import XaiflowError
from xaiflow.locks import WorkspaceBusyError

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
AUTH_ENV = "XAIFLOW_ANNOTATE_AUTH_STRING"
#: the page's assets (package data in xaiflow/annotate/static/) and their content types
ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
          "app.css": "text/css; charset=utf-8"}
#: room for the JSON fields beside the region in a submission
SUBMIT_OVERHEAD = 16 * 1024
#: longest time on one image that is stored as measured (a week: a tab left open)
MAX_SECONDS = 7 * 24 * 3600.0
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
IMAGE_PATH = re.compile(r"^/api/image/(\d{1,12})\.png$")
#: seconds a connection may stay silent: an idle browser preconnect then ends, so Ctrl-C (which waits
#: for the request threads) is not held up by it
IDLE_TIMEOUT_SECONDS = 10
#: a busy workspace group (another writer adding an annotator): the page may try again after this
RETRY_AFTER_SECONDS = 5


def auth_from_env() -> str | None:
    """The ``user:password`` of ``$XAIFLOW_ANNOTATE_AUTH_STRING`` (None when unset or empty)."""
    value = os.environ.get(AUTH_ENV) or None
    if value is not None and (":" not in value or not value.split(":", 1)[0] or not value.split(":", 1)[1]):
        raise AnnotationError(f"${AUTH_ENV} must be 'user:password' (both non-empty)")
    return value


def asset(name: str) -> bytes:
    """One of the page's files, from the installed package."""
    return resources.files("xaiflow.annotate").joinpath("static", name).read_bytes()


class AnnotationServer:
    """Serves one :class:`AnnotationSession` on ``127.0.0.1:port`` (0: a free port).

    ``auth``: ``user:password`` for basic auth; None: a random token per start (in :attr:`url`).
    Use as a context manager, or :meth:`serve_forever` then :meth:`close`; :meth:`close` waits for
    requests in flight, so a submission being written when the server stops is written whole.
    """

    def __init__(self, session: AnnotationSession, *, port: int = 0, auth: str | None = None) -> None:
        self.session = session
        self.auth = auth.encode() if auth else None
        self.token = None if auth else secrets.token_urlsafe(32)
        try:
            self.httpd = ThreadingHTTPServer((HOST, port), AnnotationHandler)
        except OSError as e:
            raise AnnotationError(f"cannot listen on {HOST}:{port}: {e.strerror} (choose another --port)") from None
        self.httpd.daemon_threads = False  # server_close joins the request threads: no half-written submission
        self.httpd.app = self  # type: ignore[attr-defined]
        self.port = self.httpd.server_address[1]
        self.cookie = f"xaiflow_annotate_{self.port}"
        self.hosts = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        width, height = session.width, session.height
        self.max_body = 4 * math.ceil(math.ceil(width * height / 8) / 3) + SUBMIT_OVERHEAD
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address (with the token when there is one): what the expert opens."""
        return f"http://{HOST}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> AnnotationServer:
        """Serve from a background thread (tests, notebooks)."""
        self._thread = threading.Thread(target=self.serve_forever, name=f"annotate-{self.port}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
            self._thread.join()
            self._thread = None
        self.httpd.server_close()

    def __enter__(self) -> AnnotationServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authorized(self, headers: Any) -> bool:
        """Whether a request carries the session's credentials (basic auth, or the token's cookie)."""
        if self.auth is not None:
            scheme, _, value = (headers.get("Authorization") or "").partition(" ")
            try:
                given = base64.b64decode(value.strip(), validate=True)
            except (binascii.Error, ValueError):
                return False
            return scheme.lower() == "basic" and hmac.compare_digest(given, self.auth)
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("Cookie") or "")
        except CookieError:  # a malformed Cookie header is simply no credential
            return False
        morsel = cookie.get(self.cookie)
        return morsel is not None and self.token_matches(morsel.value)

    def token_matches(self, value: str) -> bool:
        return self.token is not None and hmac.compare_digest(value.encode(), self.token.encode())

    def state(self, after: int | None = None) -> dict[str, Any]:
        """What the page needs to show the next image: no sample id, label or prediction in it."""
        s = self.session
        return {"dataset": s.dataset, "annotator": s.annotator, "split": s.split, "classes": s.classes,
                "height": s.height, "width": s.width, "total": s.total, "done": s.n_done,
                "next": s.next_position(after)}


class AnnotationHandler(BaseHTTPRequestHandler):
    """One request: check the host, the credentials, then route (see the module doc)."""

    server_version = "xaiflow-annotate"
    sys_version = ""
    timeout = IDLE_TIMEOUT_SECONDS

    @property
    def app(self) -> AnnotationServer:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)  # never the query (token)

    # --- responses -------------------------------------------------------------------------------
    def send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in {**SECURITY_HEADERS, "Content-Type": content_type, "Content-Length": str(len(body)),
                           **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, status: int, payload: dict[str, Any]) -> None:
        self.send(status, json.dumps(payload).encode(), "application/json")

    def fail(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps({"error": message}).encode(), "application/json", headers)

    def refuse(self) -> None:
        if self.app.auth is not None:
            self.fail(HTTPStatus.UNAUTHORIZED, "authentication required",
                      {"WWW-Authenticate": 'Basic realm="xaiflow annotate", charset="UTF-8"'})
        else:
            self.fail(HTTPStatus.FORBIDDEN, "open the URL printed by `xaiflow annotate` (with its token)")

    # --- checks ----------------------------------------------------------------------------------
    def host_ok(self) -> bool:
        """Whether the request is addressed to this server by name (answers it when not)."""
        if (self.headers.get("Host") or "") not in self.app.hosts:
            self.fail(HTTPStatus.FORBIDDEN, "unexpected Host header")
            return False
        return True

    def admitted(self) -> bool:
        """Host header of this server, and valid credentials; answers the request when not."""
        if not self.host_ok():
            return False
        if not self.app.authorized(self.headers):
            self.refuse()
            return False
        return True

    # --- routes ----------------------------------------------------------------------------------
    def do_GET(self) -> None:
        url = urlsplit(self.path)
        token = parse_qs(url.query).get("token")
        if url.path == "/" and token and self.app.token is not None:
            if self.host_ok():
                self.login(token[0])
            return
        if not self.admitted():
            return
        try:
            if url.path == "/":
                self.send(HTTPStatus.OK, asset("index.html"), ASSETS["index.html"])
            elif url.path.startswith("/static/") and url.path[len("/static/"):] in ASSETS:
                name = url.path[len("/static/"):]
                self.send(HTTPStatus.OK, asset(name), ASSETS[name])
            elif url.path == "/api/state":
                after = parse_qs(url.query).get("after", [""])[0]
                self.send_json(HTTPStatus.OK, self.app.state(int(after) if after.isdigit() else None))
            elif match := IMAGE_PATH.match(url.path):
                self.send(HTTPStatus.OK, self.app.session.image_png(int(match.group(1))), "image/png")
            else:
                self.fail(HTTPStatus.NOT_FOUND, "not found")
        except Exception as e:  # noqa: BLE001 - every failure is answered (see the module doc)
            self.fail_with(e, HTTPStatus.NOT_FOUND)

    def do_HEAD(self) -> None:
        self.do_GET()

    def login(self, token: str) -> None:
        """``/?token=...``: keep a valid token in the cookie and show the bare URL."""
        if not self.app.token_matches(token):
            self.refuse()
            return
        cookie = f"{self.app.cookie}={self.app.token}; HttpOnly; SameSite=Strict; Path=/"
        self.send(HTTPStatus.SEE_OTHER, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})

    def do_POST(self) -> None:
        if not self.admitted():
            return
        origin = self.headers.get("Origin")
        if origin is not None and origin not in {f"http://{h}" for h in self.app.hosts}:
            self.fail(HTTPStatus.FORBIDDEN, "cross-origin request")
            return
        if urlsplit(self.path).path != "/api/submit":
            self.fail(HTTPStatus.NOT_FOUND, "not found")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self.fail(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send JSON (Content-Type: application/json)")
            return
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            self.fail(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
            return
        if int(length) > self.app.max_body:
            self.fail(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {self.app.max_body} bytes")
            self.close_connection = True  # the unread body must not be parsed as the next request
            return
        try:
            body = json.loads(self.rfile.read(int(length)))
        except ValueError as e:  # json.JSONDecodeError and a body that is not UTF-8 are ValueErrors
            self.fail(HTTPStatus.BAD_REQUEST, f"submission: not JSON ({e})")
            return
        except (TimeoutError, ConnectionError):  # the body did not arrive in time, or the browser went away
            self.close_connection = True
            return
        try:
            self.send_json(HTTPStatus.OK, self.submit(body))
        except Exception as e:  # noqa: BLE001 - every failure is answered (see the module doc)
            self.fail_with(e, HTTPStatus.BAD_REQUEST)

    def fail_with(self, error: Exception, refused: int) -> None:
        """Answer a request that raised ``error``; ``refused``: the status of a plain
        :class:`AnnotationError` (the request's input is wrong)."""
        if isinstance(error, ConnectionError):  # the browser went away: nobody to answer
            self.close_connection = True
        elif isinstance(error, WorkspaceBusyError):
            self.fail(HTTPStatus.SERVICE_UNAVAILABLE, f"busy, try again in a few seconds: {error}",
                      {"Retry-After": str(RETRY_AFTER_SECONDS)})
        elif isinstance(error, StaleAnnotationsError) or (isinstance(error, XaiflowError)
                                                           and not isinstance(error, AnnotationError)):
            self.fail(HTTPStatus.CONFLICT, str(error))
        elif isinstance(error, AnnotationError):
            self.fail(refused, str(error))
        else:
            log.exception("annotation server: %s %s failed", self.command, urlsplit(self.path).path)
            self.fail(HTTPStatus.INTERNAL_SERVER_ERROR,
                      f"internal error ({type(error).__name__}: {error}); see the server's log")

    def submit(self, body: Any) -> dict[str, Any]:
        """Store ``{"position", "label", "confidence", "seconds", "region"}`` (``region``: the painted
        mask at the image's resolution, row-major, 8 pixels a byte, most significant bit first, base64)
        and return the state with the next image after this one."""
        if not isinstance(body, dict):
            raise AnnotationError("submission: expected a JSON object")
        position, label, confidence, seconds, region = (body.get(k) for k in
                                                        ("position", "label", "confidence", "seconds", "region"))
        if not isinstance(position, int) or isinstance(position, bool):
            raise AnnotationError(f"submission: position must be an integer, got {position!r}")
        if not isinstance(label, str):
            raise AnnotationError("submission: label must be a class name")
        for name, value in (("confidence", confidence), ("seconds", seconds)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
                raise AnnotationError(f"submission: {name} must be a finite number, got {value!r}")
        if not 0 <= seconds <= MAX_SECONDS:
            raise AnnotationError(f"submission: seconds {seconds!r} outside [0, {MAX_SECONDS:g}]")
        self.app.session.submit(position, label=label, confidence=float(confidence), seconds=float(seconds),
                                region=self.decode_region(region))
        return self.app.state(after=position)

    def decode_region(self, value: Any) -> np.ndarray:
        height, width = self.app.session.height, self.app.session.width
        n = height * width
        try:
            packed = base64.b64decode(value, validate=True) if isinstance(value, str) else None
        except (binascii.Error, ValueError):
            packed = None
        if packed is None or len(packed) != math.ceil(n / 8):
            raise AnnotationError(f"submission: region must be {math.ceil(n / 8)} bytes (a {height}x{width} "
                                  "mask, 8 pixels a byte) in base64")
        return np.unpackbits(np.frombuffer(packed, np.uint8), count=n).reshape(height, width)
