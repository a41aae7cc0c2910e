"""A local PostgreSQL database for a Prefect server that outgrows SQLite.

Prefect's default SQLite database serializes every write: fine for one laptop, a bottleneck when
hundreds of workers report task runs, and one file on one disk. A cluster deployment runs the
Prefect server on PostgreSQL (``deploy/prefect-postgres/compose.yaml``; docs/scaling.md). This
module starts a throwaway PostgreSQL server on loopback from the machine's own PostgreSQL binaries,
for trying that set-up here and for the test that checks it (tests/test_deploy.py):

    with postgres_server(home) as url, prefect_server(home=..., database_url=url):
        ...   # flows report to a Prefect server whose database is PostgreSQL

As root (PostgreSQL refuses to run as root) the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import glob
import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.local import LOOPBACK, free_port


def postgres_bin(name: str) -> str | None:
    """A PostgreSQL server program (``initdb``, ``pg_ctl``, ``createdb``): on PATH, else Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def postgres_available() -> bool:
    return all(postgres_bin(n) for n in ("initdb", "pg_ctl", "createdb"))


def _as_server_user(cmd: list[str]) -> list[str]:
    """``cmd`` as the ``postgres`` user when this process is root (initdb and postgres refuse root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], what: str, env: dict[str, str] | None = None) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"PostgreSQL: {what} failed ({out.returncode}): {(out.stderr or out.stdout).strip()[-2000:]}")


@contextmanager
def postgres_server(home: str | os.PathLike[str], port: int | None = None, database: str = "prefect",
                    user: str = "prefect") -> Iterator[str]:
    """Initialise a PostgreSQL cluster, serve it on 127.0.0.1:``port`` (a free port by default) with a
    random password, create ``database``; yield its SQLAlchemy URL for Prefect
    (``postgresql+asyncpg://...``). The data live in ``home`` (as root: in a private folder of the
    system's temp dir, since the ``postgres`` user may not traverse ``home``'s parents, e.g. pytest's
    temporary folders; removed on exit). The server is stopped on exit; its log is left in ``home``."""
    if not postgres_available():
        raise RuntimeError("PostgreSQL server programs (initdb, pg_ctl, createdb) not found; install postgresql")
    home = Path(home).resolve()
    home.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    server_dir = Path(tempfile.mkdtemp(prefix="xaiflow-postgres-")) if as_root else home
    data, log, pwfile = server_dir / "data", server_dir / "postgres.log", server_dir / "pwfile"
    password = secrets.token_urlsafe(16)
    port = port or free_port()
    started = False
    try:
        pwfile.touch(mode=0o600)  # readable by the server's user only, removed after initdb
        pwfile.write_text(password + "\n")
        if as_root:
            shutil.chown(server_dir, "postgres")
            shutil.chown(pwfile, "postgres")
        _run(_as_server_user([postgres_bin("initdb"), "-D", str(data), "-U", user, "--pwfile", str(pwfile),
                              "--auth", "scram-sha-256", "-E", "UTF8"]), "initdb")
        pwfile.unlink()
        options = f"-h {LOOPBACK} -p {port} -k {server_dir}"  # TCP on loopback only, its Unix socket beside the data
        _run(_as_server_user([postgres_bin("pg_ctl"), "-D", str(data), "-o", options, "-l", str(log), "-w",
                              "start"]), f"starting the server (log: {log})")
        started = True
        _run([postgres_bin("createdb"), "-h", LOOPBACK, "-p", str(port), "-U", user, database],
             f"creating database {database!r}", env={**os.environ, "PGPASSWORD": password})
        yield f"postgresql+asyncpg://{user}:{password}@{LOOPBACK}:{port}/{database}"
    finally:
        if started:  # best effort: the server may be gone already
            subprocess.run(_as_server_user([postgres_bin("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                           capture_output=True, check=False)
        if as_root:
            if log.exists():
                shutil.copy(log, home / "postgres.log")
            shutil.rmtree(server_dir, ignore_errors=True)
