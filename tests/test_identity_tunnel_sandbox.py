"""The whole chain in the faithful sandbox: auth proxy -> tunnel (native client, and AWS's own plugin) ->
emulated relay agent -> RDS front -> real PostgreSQL. No password anywhere on the client side; each
person is themselves; nothing in any process's environment or argv holds a token or the master password."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ops import identity_tunnel
from ops.config import EnvConfig, load_env
from ops.sandbox import identities
from tests.db_fixtures import set_database_secret
from tests.identity_support import DB, MASTER, Bed, start_bed
from tests.ssm_support import real_plugin
from tests.tiers import needs_tool
from tests.tunnel_fixtures import TunnelWorld, _world, plain_sandbox_toml

pytestmark = pytest.mark.slow
PEOPLE_TOML = ('\n[[people]]\nidentity = "alice@example.com"\ndb_role = "readwrite"\n'
               '\n[[people]]\nidentity = "bob@example.com"\ndb_role = "readonly"\n')
NO_PASSFILE = "/nonexistent/bastionless-no-pgpass"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory,
          moto_server_process: str) -> Iterator[tuple[TunnelWorld, EnvConfig, Bed]]:
    tmp = tmp_path_factory.mktemp("identity-chain")
    with contextmanager(_world)(tmp, 0, moto_server_process) as world:
        env_file = world.envs_dir / "sandbox.toml"
        ca = world.state_dir / identity_tunnel.SANDBOX_CA
        # Like RDS, the front takes TLS only: break-glass (master password) connections verify it too.
        text = plain_sandbox_toml().replace(
            'sslmode = "disable"', f'sslmode = "verify-full"\nca_bundle = "{ca}"')
        env_file.write_text(text + PEOPLE_TOML)
        cfg = world.add_env("sandbox")
        address = world.client("rds").describe_db_instances(DBInstanceIdentifier=cfg.stack_name)[
            "DBInstances"][0]["Endpoint"]["Address"]
        identities.provision(cfg)
        bed = start_bed(tmp / "bed", host_name=address, keys=identities.signing_keys)
        try:
            world.map_host(address, 5432, bed.front_port)
            set_database_secret(world, cfg, username=MASTER, password=bed.master_password)
            ca.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(bed.certs.ca, ca)
            yield world, load_env("sandbox", world.envs_dir), bed
        finally:
            bed.close()


def who_am_i(info: Any) -> tuple[str, str]:
    with psycopg.connect(host=info.local_host, port=info.local_port, dbname=DB, user="anyone",
                         passfile=NO_PASSFILE, connect_timeout=15) as conn:
        row = conn.execute("select current_user, current_setting('application_name')").fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


@pytest.mark.parametrize("transport", ["native", "plugin"])
def test_each_person_is_themselves_through_the_whole_chain(chain: tuple[TunnelWorld, EnvConfig, Bed], transport: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    _, cfg, bed = chain
    if transport == "plugin":
        monkeypatch.setenv("BASTIONLESS_SESSION_MANAGER_PLUGIN", real_plugin())
    for who, db_user in (("alice@example.com", "alice"), ("bob@example.com", "bob")):
        monkeypatch.setenv(identities.PERSON_ENV, who)
        with identity_tunnel.open_auth_tunnel(cfg, transport=transport, reason="identity test") as info:
            assert info.db_user == db_user
            assert who_am_i(info) == (db_user, f"client (bastionless: {who})")
            assert identity_tunnel.url(info) == f"postgresql://{db_user}@127.0.0.1:{info.local_port}/{DB}"
            _assert_no_secret_in_any_process(bed)


def test_someone_not_in_people_is_told_how_to_get_in(chain: tuple[TunnelWorld, EnvConfig, Bed],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _, cfg, _ = chain
    monkeypatch.setenv(identities.PERSON_ENV, "")  # the shared sandbox engineer's credentials: nobody's
    with pytest.raises(Exception, match=r"is not in \[\[people\]\]") as caught:
        identity_tunnel.resolve_caller(cfg)
    assert "invoke db-access --env sandbox" in getattr(caught.value, "next_step", "")


@needs_tool("psql", "the psql client is not installed")
def test_psql_line_from_the_issue(chain: tuple[TunnelWorld, EnvConfig, Bed], monkeypatch: pytest.MonkeyPatch) -> None:
    _, cfg, _ = chain
    monkeypatch.setenv(identities.PERSON_ENV, "alice@example.com")
    with identity_tunnel.open_auth_tunnel(cfg, transport="native") as info:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGPASSFILE": NO_PASSFILE}
        out = subprocess.run(["psql", "-h", info.local_host, "-p", str(info.local_port), "-d", DB, "-w", "-Atc",
                              "select current_user"], env=env, capture_output=True, text=True, timeout=30, check=False)
    assert (out.returncode, out.stdout.strip()) == (0, "alice"), out.stderr


def _assert_no_secret_in_any_process(bed: Bed) -> None:
    """Tokens (their signature parameter) and the master password appear in no environment or argv."""
    needles = (b"X-Amz-Signature", bed.master_password.encode())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        for name in ("environ", "cmdline"):
            try:
                data = (entry / name).read_bytes()
            except OSError:
                continue
            for needle in needles:
                assert needle not in data, f"pid {entry.name} {name} holds a secret"
    # Files: the sandbox state (tunnel records, sessions, endpoints), the PostgreSQL log, the front's log.
    for root in (Path(os.environ["BASTIONLESS_STATE_DIR"]), bed.cluster.root / "log"):
        for path in [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]:
            with contextlib.suppress(OSError):
                data = path.read_bytes()
                assert not any(n in data for n in needles), f"{path} holds a secret"
    assert not any("X-Amz-Signature" in line or bed.master_password in line for line in bed.front_log)


class _Ready(io.StringIO):
    """Captures `invoke tunnel`'s ready text and tells a waiting thread when it arrives."""

    def __init__(self) -> None:
        super().__init__()
        self.ready = threading.Event()

    def write(self, text: str) -> int:
        count = super().write(text)
        if "DATABASE_URL=" in self.getvalue():
            self.ready.set()
        return count


def test_invoke_tunnel_foreground_serves_the_caller_until_sigterm(chain: tuple[TunnelWorld, EnvConfig, Bed],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _, cfg, _ = chain
    monkeypatch.setenv(identities.PERSON_ENV, "bob@example.com")
    out = _Ready()
    seen: list[str] = []

    def client() -> None:
        try:
            if out.ready.wait(60):
                port = int(re.search(r"@127\.0\.0\.1:(\d+)/", out.getvalue()).group(1))  # type: ignore[union-attr]
                with psycopg.connect(host="127.0.0.1", port=port, dbname=DB, user="x", passfile=NO_PASSFILE) as conn:
                    row = conn.execute("select current_user").fetchone()
                    seen.append(str(row[0]) if row else "")
        finally:
            os.kill(os.getpid(), signal.SIGTERM)

    helper = threading.Thread(target=client)
    helper.start()
    identity_tunnel.run(cfg, local_port=0, transport="native", out=out)
    helper.join(10)
    assert seen == ["bob"]
    assert "auth proxy (as bob" in out.getvalue()
    assert "DATABASE_URL=postgresql://bob@127.0.0.1:" in out.getvalue()
    assert "password" not in out.getvalue().replace("no password", "")


@needs_tool("psql", "the psql client is not installed")
def test_invoke_psql_is_you_and_break_glass_is_the_master(chain: tuple[TunnelWorld, EnvConfig, Bed],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.psql import run_psql

    _, cfg, bed = chain
    monkeypatch.setenv(identities.PERSON_ENV, "bob@example.com")
    with scanning_proc(bed) as scans:
        mine = run_psql(cfg, command="select current_user, pg_sleep(0.5)", args=["-At"], transport="native",
                        capture=True)
    assert (mine.returncode, mine.stdout.strip()) == (0, "bob|"), mine.stderr
    assert scans, "the /proc scan never ran while psql did"
    notices: list[str] = []
    master = run_psql(cfg, command="select current_user", args=["-At"], transport="native", capture=True,
                      break_glass=True, report=notices.append)
    assert (master.returncode, master.stdout.strip()) == (0, MASTER), master.stderr
    assert any("BREAK-GLASS" in line for line in notices)


def test_invoke_migrate_runs_alembic_as_you_with_a_passwordless_url(chain: tuple[TunnelWorld, EnvConfig, Bed],
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.migrate import migrate
    from tests.db_fixtures import copy_migrations

    _, cfg, bed = chain
    bed.superuser_sql("grant create on schema public to alice")
    monkeypatch.setenv(identities.PERSON_ENV, "alice@example.com")
    ini = copy_migrations(tmp_path)
    with scanning_proc(bed) as scans:
        migrate(cfg, yes=True, ini=str(ini), transport="native", report=lambda _line: None)
    assert scans
    owners = bed.superuser_sql("select distinct pg_get_userbyid(relowner) from pg_class c join pg_namespace n "
                               "on n.oid = c.relnamespace where n.nspname = 'public' and c.relkind = 'r'")
    assert owners == [("alice",)]


@contextmanager
def scanning_proc(bed: Bed) -> Iterator[list[str]]:
    """Scan /proc for secrets over and over while the block runs (its child processes come and go)."""
    scans: list[str] = []
    failures: list[BaseException] = []
    done = threading.Event()

    def scan() -> None:
        while not done.is_set():
            try:
                _assert_no_secret_in_any_process(bed)
            except AssertionError as exc:
                failures.append(exc)
                return
            scans.append("scanned")
            done.wait(0.05)

    scanner = threading.Thread(target=scan)
    scanner.start()
    try:
        yield scans
    finally:
        done.set()
        scanner.join(10)
    assert not failures, failures[0]


def test_invoke_db_access_applies_people_then_has_nothing_to_do(chain: tuple[TunnelWorld, EnvConfig, Bed]) -> None:
    from ops.dbaccess import db_access

    _, cfg, bed = chain
    lines: list[str] = []
    first = db_access(cfg, yes=True, transport="native", report=lines.append)
    assert not first.empty
    assert any("update bob (bob@example.com): readonly" in line for line in lines)
    again = db_access(cfg, yes=True, transport="native", report=lines.append)
    assert again.empty and "nothing to do" in lines[-1]
    groups = bed.superuser_sql("select r.rolname, g.rolname from pg_auth_members m join pg_roles r on r.oid = m.member "
                               "join pg_roles g on g.oid = m.roleid where r.rolname in ('alice', 'bob') "
                               "and g.rolname <> 'rds_iam' order by 1")
    assert groups == [("alice", "readwrite"), ("bob", "readonly")]
    assert bed.master_password not in "\n".join(lines)


def test_background_auth_tunnel_is_listed_used_and_closed(chain: tuple[TunnelWorld, EnvConfig, Bed],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from ops import tunnels_state

    _, cfg, _ = chain
    monkeypatch.setenv(identities.PERSON_ENV, "alice@example.com")
    out = io.StringIO()
    identity_tunnel.run(cfg, local_port=0, transport="native", background=True, out=out)
    try:
        record = tunnels_state.read("sandbox")
        assert record is not None and record.background and record.db_user == "alice"
        assert "stop: invoke tunnel-close --env sandbox" in out.getvalue()
        with psycopg.connect(host="127.0.0.1", port=record.local_port, dbname=DB, user="x",
                             passfile=NO_PASSFILE) as conn:
            assert conn.execute("select current_user").fetchone() == ("alice",)
    finally:
        closed = tunnels_state.close("sandbox")
    assert closed.pid == record.pid and tunnels_state.read("sandbox") is None
