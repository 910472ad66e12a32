"""The database commands of the demo against the real sandbox: the terraform-applied stack in moto,
the RDS-managed secret as the sandbox rewrote it, the local Session Manager endpoint, PostgreSQL.

Exactly what a user types (`invoke migrate --env sandbox --yes`, ...), in the demo's order. The stack
is shared with other tests: this only migrates to head (idempotent) and writes into its own folders.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import pytest

from ops import aws
from tests.conftest import PROJECT_ROOT
from tests.db_fixtures import needs_psql
from tests.sandbox_fixtures import Sandbox

pytest_plugins = ["tests.sandbox_fixtures"]
pytestmark = pytest.mark.slow


def run(sandbox: Sandbox, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, env=sandbox.subprocess_env(**env))


@needs_psql
def test_demo_database_steps_on_the_deployed_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    from ops.secrets import database_credentials

    with aws.acting_as(aws.BREAK_GLASS):  # the env lists people: only break-glass reads the master secret
        password = database_credentials(sandbox.cfg).password
    forms = {password, quote(password, safe=""), quote(password)}
    outputs: list[str] = []

    migrated = run(sandbox, "migrate", "--env", "sandbox", "--yes")
    outputs += [migrated.stdout, migrated.stderr]
    assert migrated.returncode == 0, migrated.stderr
    status = run(sandbox, "migrate-status", "--env", "sandbox")
    outputs += [status.stdout, status.stderr]
    assert status.returncode == 0 and "pending: none" in status.stdout, status.stderr
    query = run(sandbox, "psql", "--env", "sandbox", "-c", "select current_user, version_num from alembic_version")
    outputs += [query.stdout, query.stderr]
    assert query.returncode == 0, query.stderr
    # As yourself (the sandbox's first person), migrated and queried through the auth proxy.
    assert re.search(r"^ alice +\| 0003", query.stdout, re.MULTILINE), query.stdout
    workspace = tmp_path / "dbeaver-workspace"
    dbv = run(sandbox, "dbeaver", "--env", "sandbox", "--workspace", str(workspace))
    outputs += [dbv.stdout, dbv.stderr]
    assert dbv.returncode == 0, dbv.stderr
    data = (workspace / "General" / ".dbeaver" / "data-sources.json").read_text()
    assert json.loads(data)["connections"]["postgres-jdbc-bastionless-sandbox"]["configuration"]["user"] == "alice"
    url = run(sandbox, "db-url", "--env", "sandbox")
    outputs += [url.stdout, url.stderr, data]
    # db-url describes what `invoke tunnel` gives you here: the auth proxy's local end, as yourself, no password.
    assert url.returncode == 0, url.stderr
    assert "DATABASE_URL=postgresql://alice@127.0.0.1:5433/app" in url.stdout and "as you (alice" in url.stdout
    assert "app_admin" not in url.stdout
    bob = run(sandbox, "db-url", "--env", "sandbox", BASTIONLESS_SANDBOX_PERSON="bob@example.com")
    assert bob.returncode == 0 and "DATABASE_URL=postgresql://bob@127.0.0.1:5433/app" in bob.stdout, bob.stderr
    nothing = run(sandbox, "db-url", "--env", "sandbox", "--pgservice", "--pgpass",
                  PGSERVICEFILE=str(tmp_path / "pg_service.conf"), PGPASSFILE=str(tmp_path / "pgpass"))
    assert nothing.returncode != 0 and "there is none to store" in nothing.stderr, nothing.stdout + nothing.stderr
    assert not (tmp_path / "pgpass").exists() and not (tmp_path / "pg_service.conf").exists()
    leaks = [i for i, text in enumerate(outputs) if any(f in text for f in forms)]
    assert not leaks, f"the password appears in outputs {leaks}"
