"""A Prefect server on PostgreSQL (the cluster set-up of docs/scaling.md): a real PostgreSQL server on
loopback (deploy/postgres.py), a real ``prefect server start`` on it, a flow run reported to it."""

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.local import prefect_server
from deploy.postgres import postgres_available, postgres_server

REPO = Path(__file__).resolve().parents[1]
FLOW = """
from prefect import flow, task

@task
def double(x):
    return 2 * x

@flow(name="postgres-check")
def check():
    return sum(double.map([1, 2, 3]).result())

print(check())
"""


def test_compose_file_listens_on_loopback_only():
    text = (REPO / "deploy/prefect-postgres/compose.yaml").read_text()
    compose = yaml.safe_load(text)
    prefect, postgres = compose["services"]["prefect"], compose["services"]["postgres"]
    assert "0.0.0.0" not in text.split("name: xaiflow-prefect")[1]  # no wildcard address in the services
    assert "ports" not in prefect and "ports" not in postgres  # nothing published beyond the host
    assert prefect["command"][prefect["command"].index("--host") + 1] == "127.0.0.1"
    assert "listen_addresses=127.0.0.1" in postgres["command"]
    assert prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert "@127.0.0.1:" in prefect["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert "PREFECT_SERVER_API_AUTH_STRING" in prefect["environment"]


@pytest.mark.skipif(not postgres_available(), reason="PostgreSQL server programs (initdb, pg_ctl) not installed")
def test_prefect_server_on_postgres_records_a_flow_run(tmp_path, monkeypatch):
    import asyncpg

    for var in ("PREFECT_API_URL", "PREFECT_HOME"):  # prefect_server sets them for this process: restored after
        monkeypatch.setenv(var, os.environ.get(var, ""))
    with postgres_server(tmp_path / "pg") as url, prefect_server(home=tmp_path / "home", database_url=url,
                                                                 log=tmp_path / "server.log"):
        env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        out = subprocess.run([sys.executable, "-c", FLOW], capture_output=True, text=True, env=env, timeout=300,
                             check=False)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip().splitlines()[-1] == "12"

        async def rows() -> tuple[int, int]:
            conn = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
            try:
                return (await conn.fetchval("select count(*) from flow_run"),
                        await conn.fetchval("select count(*) from task_run"))
            finally:
                await conn.close()

        assert asyncio.run(rows()) == (1, 3)  # the run and its tasks are in PostgreSQL
    assert not (tmp_path / "home" / "prefect.db").exists()  # not in SQLite
