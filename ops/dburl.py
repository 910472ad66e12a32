"""How to reach the database through a tunnel: libpq parameters, DATABASE_URL, PG* variables.

One place decides the TLS parameters, so migrations, psql, DBeaver, pg_service.conf and
`invoke db-url` all connect the same way:

- `verify-full`: connect by the RDS hostname (the name in its certificate) while dialling the
  tunnel on localhost: libpq `host=<rds hostname> hostaddr=127.0.0.1`, `sslrootcert=<CA bundle>`.
- `verify-ca` / `require`: connect to localhost; the chain (verify-ca) or only encryption (require).
- `disable`: the sandbox only (config refuses it elsewhere).

The password never goes into anything built here except `url(password=...)`, whose result callers
pass to a child through its environment only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

from ops.config import PROJECT_ROOT, EnvConfig
from ops.errors import ConfigError

# AWS publishes the CA bundle for every RDS region here; it is public and safe to commit.
RDS_GLOBAL_BUNDLE_URL = "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem"

LOCAL_HOST = "127.0.0.1"


@dataclass(frozen=True)
class ConnectionParams:
    host: str          # the name libpq connects by (and verifies, with verify-full)
    hostaddr: str      # the address actually dialled; "" when host is already an address
    port: int
    dbname: str
    user: str
    sslmode: str
    sslrootcert: str = ""

    def keywords(self) -> dict[str, str]:
        """libpq connection keywords, without the password, in a stable order."""
        kw = {"host": self.host, "hostaddr": self.hostaddr, "port": str(self.port), "dbname": self.dbname,
              "user": self.user, "sslmode": self.sslmode, "sslrootcert": self.sslrootcert}
        return {k: v for k, v in kw.items() if v}

    def conninfo(self) -> str:
        """A libpq keyword/value string (`host=... port=...`), without the password."""
        return " ".join(f"{k}={_conninfo_quote(v)}" for k, v in self.keywords().items())

    def url(self, *, password: str | None = None, driver: str = "") -> str:
        """`postgresql://user[:password]@host:port/db?sslmode=...`; pass `driver="psycopg"` for SQLAlchemy.

        Every part is percent-escaped, so a password with `@ : / ? # %` survives."""
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        auth = quote(self.user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        params = {k: v for k, v in (("hostaddr", self.hostaddr), ("sslmode", self.sslmode),
                                    ("sslrootcert", self.sslrootcert)) if v}
        query = f"?{urlencode(params, quote_via=quote)}" if params else ""
        return f"{scheme}://{auth}@{_url_host(self.host)}:{self.port}/{quote(self.dbname, safe='')}{query}"

    def driver_url(self, *, password: str | None = None, driver: str = "") -> str:
        """The URL for any driver: no query string at all, because async and pure-Python drivers
        (asyncpg, pg8000) reject libpq-only parameters such as `hostaddr`. TLS settings and the
        address actually dialled travel next to it in libpq_env(), which asyncpg reads too."""
        return self.url(password=password, driver=driver).split("?", 1)[0]

    def libpq_env(self, *, password: str | None = None) -> dict[str, str]:
        """PG* variables for a child process (psql, pg_dump): the password only ever travels this way."""
        names = {"host": "PGHOST", "hostaddr": "PGHOSTADDR", "port": "PGPORT", "dbname": "PGDATABASE",
                 "user": "PGUSER", "sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT"}
        env = {names[k]: v for k, v in self.keywords().items()}
        if password is not None:
            env["PGPASSWORD"] = password
        return env


def bundle_location(cfg: EnvConfig) -> str:
    """The configured CA bundle as an absolute path (relative paths are relative to the project), or ''."""
    bundle = cfg.database.ca_bundle
    if not bundle and cfg.sandbox and cfg.database.sslmode in ("verify-ca", "verify-full"):
        # The sandbox's "RDS CA": its RDS front's, made by `sandbox up` under the state dir.
        from ops.aws import state_dir
        from ops.facts import RDS_FRONT_CA, RDS_FRONT_DIR

        return str(state_dir() / RDS_FRONT_DIR / RDS_FRONT_CA)
    if not bundle:
        return ""
    path = Path(bundle).expanduser()
    return str(path if path.is_absolute() else PROJECT_ROOT / path)


def ca_bundle_path(cfg: EnvConfig) -> str:
    """bundle_location, for a connection about to be made: the file must exist."""
    location = bundle_location(cfg)
    if location and not Path(location).is_file():
        # Without it libpq fails later with a less helpful "root certificate file ... does not exist".
        bundle = cfg.database.ca_bundle
        if not bundle:
            raise ConfigError(f"the sandbox has no RDS front CA at {location}", next_step="invoke sandbox up")
        raise ConfigError(f"{cfg.source.name}: database.ca_bundle {bundle} does not exist",
                          next_step=f"curl -o {bundle} {RDS_GLOBAL_BUNDLE_URL} (see certs/README.md)")
    return location


def for_tunnel(cfg: EnvConfig, *, local_port: int, db_host: str, db_name: str = "", user: str = "",
               local_host: str = LOCAL_HOST, connecting: bool = True) -> ConnectionParams:
    """Parameters for reaching `db_host` (the RDS endpoint) through a tunnel on local_host:local_port.

    `connecting=False` only describes the connection (the tunnel's ready text): a missing CA bundle is
    then named in the URL rather than an error, since the tunnel itself does not need it."""
    sslmode = cfg.database.sslmode
    if sslmode == "verify-full" and db_host:
        host, hostaddr = db_host, local_host
    else:
        host, hostaddr = local_host, ""
    bundle = ca_bundle_path if connecting else bundle_location
    rootcert = bundle(cfg) if sslmode in ("verify-ca", "verify-full") else ""
    return ConnectionParams(host=host, hostaddr=hostaddr, port=local_port, dbname=db_name or cfg.database.name,
                            user=user or cfg.database.username, sslmode=sslmode, sslrootcert=rootcert)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _conninfo_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def details(cfg: EnvConfig, *, port: int | None = None) -> ConnectionParams:
    """Connection parameters for the env's persistent tunnel (`invoke tunnel`, [tunnel] local_port)."""
    from ops.aws import check_account
    from ops.discovery import find_database

    check_account(cfg)
    db = find_database(cfg)
    return for_tunnel(cfg, local_port=cfg.tunnel.local_port if port is None else port, db_host=db.address,
                      db_name=db.name, user=db.username)


def describe(cfg: EnvConfig, params: ConnectionParams) -> str:
    """What `invoke db-url` prints: every parameter, the URL, never the password."""
    lines = [f"{cfg.name} database through `invoke tunnel --env {cfg.name}` (password not shown):"]
    lines += [f"  {k:<12}{v}" for k, v in params.keywords().items()]
    lines += [f"  DATABASE_URL={params.url()}",
              f"  libpq:      {params.conninfo()}",
              f"  password:   Secrets Manager (RDS-managed master secret); `invoke psql --env {cfg.name}` "
              f"fetches it for you"]
    return "\n".join(lines)
