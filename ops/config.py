"""Environment configuration: `envs/<name>.toml` parsed into frozen, validated dataclasses.

Every error names the file, the field and the fix, because the person reading it is usually
someone editing a TOML file for the first time.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin, get_type_hints

from ops.errors import ConfigError
from ops.facts import ENVS_DIR_ENV, MAX_TUNNEL_SESSIONS
from ops.people import Person, parse_people
from ops.targets import Target, parse_targets

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENVS_DIR = PROJECT_ROOT / "envs"


def envs_dir() -> Path:
    """Where env files are read from: $BASTIONLESS_ENVS_DIR (test worlds), else the project's envs/."""
    return Path(os.environ.get(ENVS_DIR_ENV) or ENVS_DIR)

EgressMode = Literal["endpoints", "nat"]
BackendKind = Literal["s3", "local"]
SslMode = Literal["disable", "require", "verify-ca", "verify-full"]

_REGION_RE = re.compile(r"^[a-z]{2}(-gov|-iso[a-z]?)?-[a-z]+-\d$")
_ACCOUNT_RE = re.compile(r"^\d{12}$")
_ENV_NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,30}")
_PRINCIPAL_RE = re.compile(r"^arn:aws[a-z-]*:(iam|sts)::\d{12}:.+$")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_RFC1918 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# Graviton (arm64) instance families: a generation digit then "g" (t4g, m6gd, c7gn, im4gn), and a1.
_ARM64_TYPE_RE = re.compile(r"(a1|[a-z]+[0-9]+g[a-z]*)\.[a-z0-9]+")
_IDENT_RE = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]{0,62}$")


@dataclass(frozen=True)
class NetworkConfig:
    vpc_cidr: str = "10.40.0.0/16"
    az_count: int = 2
    egress: EgressMode = "endpoints"
    nat_per_az: bool = False


@dataclass(frozen=True)
class RelayConfig:
    instance_type: str = "t4g.nano"
    root_volume_gb: int = 8


@dataclass(frozen=True)
class DatabaseConfig:
    engine_version: str = "16"
    instance_class: str = "db.t4g.small"
    allocated_storage_gb: int = 20
    name: str = "app"
    username: str = "app_admin"
    port: int = 5432
    deletion_protection: bool = True
    backup_retention_days: int = 7
    sslmode: SslMode = "verify-full"
    ca_bundle: str = ""
    # Storage autoscaling ceiling (GB); 0 turns autoscaling off.
    max_allocated_storage_gb: int = 100
    # UTC, non-overlapping, off-hours: backups first, maintenance (which may restart) after them.
    backup_window: str = "02:00-03:00"
    maintenance_window: str = "sun:04:00-sun:05:00"
    # Default when the file does not say: true for production environments (see parse_env).
    multi_az: bool = False
    ca_cert_identifier: str = "rds-ca-rsa2048-g1"
    log_min_duration_ms: int = 1000
    # RDS enrols an end-of-life major version in paid extended support unless told not to.
    extended_support: bool = False


@dataclass(frozen=True)
class SessionConfig:
    idle_timeout_minutes: int = 20
    max_session_minutes: int = 60
    log_retention_days: int = 30
    adopt_existing_preferences: bool = False


@dataclass(frozen=True)
class AccessConfig:
    developer_principals: tuple[str, ...] = ()
    require_mfa: bool = True
    # Who may assume the break-glass role (the database master user). Default: the developer principals that
    # are IAM users (never their federated role: every SSO developer would be an admin), else the account
    # root. IAM users need MFA under an hour old; federated roles have their IdP's sign-in MFA.
    break_glass_principals: tuple[str, ...] = ()


@dataclass(frozen=True)
class EcsConfig:
    enabled: bool = False
    sample_service: bool = False
    default_container: str = ""
    shell_command: str = "/bin/sh"


@dataclass(frozen=True)
class AlarmsConfig:
    # Who the env's SNS topic notifies: email addresses, and the paging service's HTTPS endpoint. Paging
    # URLs embed an integration key, so the file names SSM SecureString parameters holding them, never the URL.
    email: tuple[str, ...] = ()
    https_endpoint_parameters: tuple[str, ...] = ()
    free_storage_gb: int = 5
    cpu_credit_balance: int = 20
    # 0: 80 % of the max_connections RDS derives from the instance class's memory.
    connections: int = 0


@dataclass(frozen=True)
class PatchingConfig:
    # false: no maintenance window or agent updates, and the relay's role loses Run Command's channel (a
    # Session-Manager-only relay that someone else patches, e.g. by replacing it onto new AMIs).
    enabled: bool = True
    # Patch Manager installs security updates on the relay in this window (UTC); the agent is kept current.
    window_schedule: str = "cron(0 3 ? * WED *)"
    window_hours: int = 2
    agent_update_schedule: str = "rate(14 days)"


@dataclass(frozen=True)
class EscalationConfig:
    # In order: who and how, e.g. "Platform on-call: PagerDuty service bastionless-prod".
    contacts: tuple[str, ...] = ()


@dataclass(frozen=True)
class StateConfig:
    backend: BackendKind = "s3"
    bucket: str = ""
    key: str = ""
    region: str = ""


@dataclass(frozen=True)
class TunnelConfig:
    local_port: int = 5433
    # Session Manager sessions behind the local port (`invoke tunnel --sessions N` overrides it): each
    # carries ~1 MB/s on AWS, so parallel dumps and restores want one per job.
    sessions: int = 1


@dataclass(frozen=True)
class MigrationsConfig:
    alembic_ini: str = "migrations/alembic.ini"
    # The project's own interpreter; empty: the project's .venv if there is one, else bastionless' own.
    python: str = ""
    # [migrations.env] NAME = "template": extra variables for env.py files that do not read
    # DATABASE_URL, e.g. POSTGRES_SERVER = "{host}". Placeholders: MIGRATION_PLACEHOLDERS.
    env: tuple[tuple[str, str], ...] = ()
    # `alembic -x` arguments (argv: placeholders that carry the password are refused).
    x_args: tuple[str, ...] = ()
    # Where env.py keeps the revision ("schema.table" if not in the search path).
    version_table: str = "alembic_version"


MIGRATION_PLACEHOLDERS = ("host", "port", "user", "password", "dbname", "sslmode", "sslrootcert", "url")


@dataclass(frozen=True)
class TerraformConfig:
    # A directory laid out like `terraform providers mirror` output; empty means "use the
    # BASTIONLESS_PROVIDER_MIRROR environment variable, else the public registry".
    provider_mirror: str = ""


@dataclass(frozen=True)
class EnvConfig:
    name: str
    source: Path
    account_id: str
    region: str
    sandbox: bool = False
    # Production guardrails follow this flag, not the env's name; None: true unless `sandbox = true`.
    production: bool | None = None
    network: NetworkConfig = field(default_factory=NetworkConfig)
    relay: RelayConfig = field(default_factory=RelayConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    session: SessionConfig = field(default_factory=SessionConfig)
    access: AccessConfig = field(default_factory=AccessConfig)
    ecs: EcsConfig = field(default_factory=EcsConfig)
    state: StateConfig = field(default_factory=StateConfig)
    tunnel: TunnelConfig = field(default_factory=TunnelConfig)
    migrations: MigrationsConfig = field(default_factory=MigrationsConfig)
    terraform: TerraformConfig = field(default_factory=TerraformConfig)
    # [[people]]: who gets a database identity, and as what (ops/people.py).
    people: tuple[Person, ...] = ()
    # [[targets]]: services besides the database that developers may forward to (ops/targets.py).
    targets: tuple[Target, ...] = ()
    alarms: AlarmsConfig = field(default_factory=AlarmsConfig)
    patching: PatchingConfig = field(default_factory=PatchingConfig)
    escalation: EscalationConfig = field(default_factory=EscalationConfig)

    @property
    def stack_name(self) -> str:
        return f"bastionless-{self.name}"

    @property
    def is_prod(self) -> bool:
        """`production = true|false` in the env file; by default every env that is not the sandbox."""
        return self.production if self.production is not None else not self.sandbox

    def subnet_cidrs(self) -> dict[str, list[str]]:
        """The /24s carved from the VPC: public, private (with egress), isolated, per AZ."""
        return subnet_plan(self.network.vpc_cidr, self.network.az_count)


def subnet_plan(vpc_cidr: str, az_count: int) -> dict[str, list[str]]:
    subnets = list(ipaddress.ip_network(vpc_cidr).subnets(new_prefix=24))
    tiers = ("public", "private", "isolated")
    # Tier blocks start at fixed offsets so adding an AZ never renumbers an existing subnet.
    return {tier: [str(subnets[t * 4 + az]) for az in range(az_count)] for t, tier in enumerate(tiers)}


_SECTIONS: dict[str, type] = {
    "network": NetworkConfig,
    "relay": RelayConfig,
    "database": DatabaseConfig,
    "session": SessionConfig,
    "access": AccessConfig,
    "ecs": EcsConfig,
    "state": StateConfig,
    "tunnel": TunnelConfig,
    "migrations": MigrationsConfig,
    "terraform": TerraformConfig,
    "alarms": AlarmsConfig,
    "patching": PatchingConfig,
    "escalation": EscalationConfig,
}
_TOP_LEVEL = {"account_id": str, "region": str, "sandbox": bool, "production": bool}


def env_path(name: str, directory: Path | None = None) -> Path:
    return (directory or envs_dir()) / f"{name}.toml"


def available_envs(directory: Path | None = None) -> list[str]:
    return sorted(p.stem for p in (directory or envs_dir()).glob("*.toml"))


def load_env(name: str, directory: Path | None = None) -> EnvConfig:
    # fullmatch: `$` would also match before a trailing newline ("prod\n").
    if not _ENV_NAME_RE.fullmatch(name):
        raise ConfigError(f"environment name {name!r} is invalid: use lowercase letters, digits and '-'")
    path = env_path(name, directory)
    if not path.is_file():
        known = ", ".join(available_envs(directory)) or "none"
        raise ConfigError(f"unknown environment {name!r}: no file {_rel(path)} (known: {known}); "
                          f"copy envs/staging.toml to {_rel(path)} to add one")
    return parse_env(name, path.read_bytes(), path)


def parse_env(name: str, data: bytes, path: Path) -> EnvConfig:
    where = _rel(path)
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: not valid TOML ({exc}); fix the syntax at that position") from None

    unknown = sorted(set(raw) - set(_TOP_LEVEL) - set(_SECTIONS) - {"people", "targets"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; allowed top-level keys and sections: "
                          f"{', '.join(sorted([*_TOP_LEVEL, *_SECTIONS, 'people', 'targets']))}")
    for key in ("account_id", "region"):
        if key not in raw:
            raise ConfigError(f"{where}: field {key!r} is missing; add `{key} = \"...\"` at the top of the file")
    top: dict[str, Any] = {}
    for key, typ in _TOP_LEVEL.items():
        if key in raw:
            top[key] = _coerce(where, key, raw[key], typ)
    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        value = raw.get(section, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: {section!r} must be a table; write it as [{section}]")
        sections[section] = _build_section(where, section, cls, value)

    if "multi_az" not in raw.get("database", {}):
        is_prod = name == "prod" or name.startswith("prod-")
        sections["database"] = dataclasses.replace(sections["database"], multi_az=is_prod)
    people = parse_people(where, raw.get("people", []), master_user=sections["database"].username)
    targets = parse_targets(where, raw.get("targets", []))
    cfg = EnvConfig(name=name, source=path, **top, **sections, people=people, targets=targets)
    _validate(where, cfg)
    return cfg


def _build_section(where: str, section: str, cls: type, values: dict[str, Any]) -> Any:
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field {section}.{unknown[0]}; allowed: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(where, f"{section}.{k}", v, hints[k]) for k, v in values.items()}
    return cls(**kwargs)


def _coerce(where: str, dotted: str, value: Any, typ: Any) -> Any:
    origin = get_origin(typ)
    if origin is Literal:
        allowed = get_args(typ)
        if value not in allowed:
            raise ConfigError(f"{where}: {dotted} = {value!r} is not allowed; use one of: "
                              f"{', '.join(map(repr, allowed))}")
        return value
    if origin is tuple and get_args(typ) == (tuple[str, str], ...):
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(f"{where}: {dotted} must be a table of strings; write it as [{dotted}] with "
                              f"lines NAME = \"value\"")
        return tuple(value.items())
    if origin is tuple:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: {dotted} must be a list of strings, e.g. {dotted.split('.')[-1]} = [\"...\"]")
        return tuple(value)
    # bool is a subclass of int: check it first so `port = true` is rejected.
    if typ is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {dotted} must be a whole number, got {value!r}; write digits without quotes")
    if typ is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: {dotted} must be true or false, got {value!r}; write true or false without quotes")
    if typ is str and not isinstance(value, str):
        raise ConfigError(f"{where}: {dotted} must be a quoted string, got {value!r}; put the value in double quotes")
    return value


def _validate(where: str, cfg: EnvConfig) -> None:
    def fail(dotted: str, problem: str, fix: str) -> None:
        raise ConfigError(f"{where}: {dotted} {problem}; {fix}")

    if not _ACCOUNT_RE.match(cfg.account_id):
        fail("account_id", f"= {cfg.account_id!r} is not a 12-digit AWS account id",
             "write it as a quoted string of 12 digits, e.g. \"123456789012\"")
    if not _REGION_RE.match(cfg.region):
        fail("region", f"= {cfg.region!r} is not an AWS region", "use a region code such as \"eu-west-1\"")

    net = cfg.network
    try:
        vpc = ipaddress.ip_network(net.vpc_cidr, strict=True)
    except ValueError as exc:
        fail("network.vpc_cidr", f"= {net.vpc_cidr!r} is not a valid network ({exc})",
             "use a network address such as \"10.40.0.0/16\"")
        raise  # unreachable, for type checkers
    # The rule and its message agree: RFC 1918 only (is_private would also pass 169.254/16, 198.18/15...).
    if not isinstance(vpc, ipaddress.IPv4Network) or not any(vpc.subnet_of(ipaddress.IPv4Network(n))
                                                             for n in _RFC1918):
        fail("network.vpc_cidr", f"= {net.vpc_cidr!r} is not a private IPv4 range (RFC 1918)",
             "use a range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16")
    if not 16 <= vpc.prefixlen <= 20:
        fail("network.vpc_cidr", f"has prefix /{vpc.prefixlen}",
             "AWS allows /16 to /28 and we carve 12 /24 subnets, so use a prefix from /16 to /20")
    if not 2 <= net.az_count <= 3:
        fail("network.az_count", f"= {net.az_count} is out of range", "use 2 or 3")
    if net.nat_per_az and net.egress != "nat":
        fail("network.nat_per_az", "is true but egress is not \"nat\"",
             "set egress = \"nat\" or remove nat_per_az")

    if not 1 <= cfg.relay.root_volume_gb <= 100:
        fail("relay.root_volume_gb", f"= {cfg.relay.root_volume_gb} is out of range", "use 8 to 100")
    if "." not in cfg.relay.instance_type:
        fail("relay.instance_type", f"= {cfg.relay.instance_type!r} is not an instance type",
             "e.g. \"t4g.nano\"")
    if not _ARM64_TYPE_RE.fullmatch(cfg.relay.instance_type):
        # The relay's AMI is the arm64 Amazon Linux 2023 image: an x86 type fails only at apply time.
        fail("relay.instance_type", f"= {cfg.relay.instance_type!r} is not an arm64 (Graviton) type, but the "
             "relay's AMI is arm64", "use a Graviton type such as \"t4g.nano\" or \"t4g.micro\"")

    db = cfg.database
    _port(fail, "database.port", db.port)
    if not re.match(r"^\d{2}(\.\d+)?$", db.engine_version):
        fail("database.engine_version", f"= {db.engine_version!r} is not a PostgreSQL version",
             "e.g. \"16\" or \"16.4\"")
    if not db.instance_class.startswith("db."):
        fail("database.instance_class", f"= {db.instance_class!r} is not an RDS class", "e.g. \"db.t4g.small\"")
    if not 20 <= db.allocated_storage_gb <= 65536:
        fail("database.allocated_storage_gb", f"= {db.allocated_storage_gb} is out of range", "gp3 needs 20 GB or more")
    for key, value in (("database.name", db.name), ("database.username", db.username)):
        if not _IDENT_RE.match(value):
            fail(key, f"= {value!r} is not a PostgreSQL identifier", "start with a letter; letters, digits, '_'")
    if not 0 <= db.backup_retention_days <= 35:
        fail("database.backup_retention_days", f"= {db.backup_retention_days} is out of range", "use 0 to 35")
    if not cfg.sandbox:
        if db.sslmode == "disable":
            fail("database.sslmode", "= \"disable\" outside the sandbox",
                 "RDS forces SSL here; use \"require\" or \"verify-full\"")
        if not db.deletion_protection and cfg.is_prod:
            fail("database.deletion_protection", "is false for a production environment", "set it to true")
    if db.sslmode in ("verify-ca", "verify-full") and not db.ca_bundle and not cfg.sandbox:
        fail("database.ca_bundle", f"is empty but sslmode = {db.sslmode!r} needs it",
             "point it at the RDS CA bundle (global-bundle.pem) or use sslmode = \"require\"")

    _validate_database_ops(fail, db)
    _validate_alarms(fail, cfg)

    s = cfg.session
    if not 1 <= s.idle_timeout_minutes <= 60:
        fail("session.idle_timeout_minutes", f"= {s.idle_timeout_minutes} is out of range", "AWS allows 1 to 60")
    if not 1 <= s.max_session_minutes <= 1440:
        fail("session.max_session_minutes", f"= {s.max_session_minutes} is out of range", "AWS allows 1 to 1440")
    valid_retention = {1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
                       2922, 3288, 3653}
    if s.log_retention_days not in valid_retention:
        fail("session.log_retention_days", f"= {s.log_retention_days} is not a CloudWatch retention value",
             f"use one of {sorted(valid_retention)}")

    for principal in cfg.access.developer_principals:
        if not _PRINCIPAL_RE.match(principal):
            fail("access.developer_principals", f"contains {principal!r}, not an IAM principal ARN",
                 "use ARNs like \"arn:aws:iam::123456789012:role/Engineers\"")
    for principal in cfg.access.break_glass_principals:
        if not _PRINCIPAL_RE.match(principal):
            fail("access.break_glass_principals", f"contains {principal!r}, not an IAM principal ARN",
                 "use ARNs like \"arn:aws:iam::123456789012:role/OnCall\"")

    st = cfg.state
    if st.backend == "s3":
        if not _BUCKET_RE.match(st.bucket):
            fail("state.bucket", f"= {st.bucket!r} is not an S3 bucket name",
                 "set the state bucket name, or backend = \"local\" for a throwaway environment")
        if not st.key.endswith(".tfstate"):
            fail("state.key", f"= {st.key!r} does not end in .tfstate", "e.g. \"bastionless/prod.tfstate\"")
        if st.region and not _REGION_RE.match(st.region):
            fail("state.region", f"= {st.region!r} is not an AWS region", "use a region code, or leave it empty")
    elif not cfg.sandbox and cfg.is_prod:
        fail("state.backend", "= \"local\" for a production environment", "use backend = \"s3\" with a bucket")

    _port(fail, "tunnel.local_port", cfg.tunnel.local_port, allow_zero=True)
    if not 1 <= cfg.tunnel.sessions <= MAX_TUNNEL_SESSIONS:
        fail("tunnel.sessions", f"= {cfg.tunnel.sessions} is out of range",
             f"use 1 (one session, the default) to {MAX_TUNNEL_SESSIONS}")
    _validate_migrations(fail, cfg.migrations)


def _validate_migrations(fail: Any, mig: MigrationsConfig) -> None:
    known = ", ".join("{" + p + "}" for p in MIGRATION_PLACEHOLDERS)
    for dotted, value in [*((f"migrations.env.{k}", v) for k, v in mig.env), *(("migrations.x_args", x)
                                                                              for x in mig.x_args)]:
        for name in re.findall(r"{([^{}]*)}", value):
            if name not in MIGRATION_PLACEHOLDERS:
                fail(dotted, f"uses the unknown placeholder {{{name}}}", f"use one of {known}")
    for name, _ in mig.env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", name):
            fail(f"migrations.env.{name}", "is not an environment variable name", "use letters, digits and '_'")
    for x in mig.x_args:
        if "{password}" in x or "{url}" in x:
            fail("migrations.x_args", f"= {x!r} would put the password on a command line",
                 "pass it through [migrations.env] (the child's environment) instead")
        if "=" not in x:
            fail("migrations.x_args", f"= {x!r} is not KEY=VALUE", "write it as \"key=value\"")
    if not re.match(r"^([A-Za-z_][A-Za-z0-9_$]*\.)?[A-Za-z_][A-Za-z0-9_$]*$", mig.version_table):
        fail("migrations.version_table", f"= {mig.version_table!r} is not a table name",
             "write \"alembic_version\" or \"schema.table\"")


_WINDOW_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_MAINT_RE = re.compile(r"^(mon|tue|wed|thu|fri|sat|sun):([01]\d|2[0-3]):([0-5]\d)-"
                       r"(mon|tue|wed|thu|fri|sat|sun):([01]\d|2[0-3]):([0-5]\d)$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE)
# RDS's default max_connections is LEAST(DBInstanceClassMemory / 9531392, 5000); memory in GiB per size.
_CLASS_MEMORY_GIB = {"micro": 1, "small": 2, "medium": 4, "large": 8, "xlarge": 16, "2xlarge": 32}


def window_minutes(text: str) -> tuple[int, int]:
    """A backup window "hh:mm-hh:mm" as minutes of the day (start, end); end < start wraps midnight."""
    m = _WINDOW_RE.match(text)
    if m is None:
        raise ValueError(text)
    return int(m.group(1)) * 60 + int(m.group(2)), int(m.group(3)) * 60 + int(m.group(4))


def estimated_max_connections(instance_class: str) -> int | None:
    """RDS PostgreSQL's default max_connections for a burstable/general class, None when unknown."""
    gib = _CLASS_MEMORY_GIB.get(instance_class.rsplit(".", 1)[-1])
    if gib is None or not instance_class.startswith(("db.t", "db.m")):
        return None
    # memory-optimised and larger classes are not in the table; m classes have 4 GiB per vCPU, same sizes.
    if instance_class.startswith("db.m"):
        gib *= 2
    return min(gib * 1024**3 // 9531392, 5000)


def _validate_database_ops(fail: Any, db: DatabaseConfig) -> None:
    if db.max_allocated_storage_gb and not db.allocated_storage_gb < db.max_allocated_storage_gb <= 65536:
        fail("database.max_allocated_storage_gb", f"= {db.max_allocated_storage_gb} is not above "
             f"allocated_storage_gb ({db.allocated_storage_gb})", "use a larger ceiling, or 0 to turn autoscaling off")
    try:
        b_start, b_end = window_minutes(db.backup_window)
    except ValueError:
        fail("database.backup_window", f"= {db.backup_window!r} is not a window", "write UTC \"hh:mm-hh:mm\"")
        raise
    if (b_end - b_start) % 1440 < 30:
        fail("database.backup_window", "is shorter than 30 minutes", "RDS needs at least 30 minutes")
    m = _MAINT_RE.match(db.maintenance_window)
    if m is None:
        fail("database.maintenance_window", f"= {db.maintenance_window!r} is not a window",
             "write UTC \"ddd:hh:mm-ddd:hh:mm\", e.g. \"sun:04:00-sun:05:00\"")
        raise ValueError
    start = _DAYS.index(m.group(1)) * 1440 + int(m.group(2)) * 60 + int(m.group(3))
    end = _DAYS.index(m.group(4)) * 1440 + int(m.group(5)) * 60 + int(m.group(6))
    if (end - start) % (7 * 1440) < 30:
        fail("database.maintenance_window", "is shorter than 30 minutes", "RDS needs at least 30 minutes")
    # The backup window recurs daily: it overlaps the maintenance window if any day's copy does.
    for day in range(7):
        bs = day * 1440 + b_start
        be = bs + (b_end - b_start) % 1440
        for shift in (-7 * 1440, 0, 7 * 1440):
            ms, me = start + shift, start + shift + (end - start) % (7 * 1440)
            if bs < me and ms < be:
                fail("database.maintenance_window", f"overlaps backup_window {db.backup_window!r}",
                     "RDS refuses overlapping windows; move one of them")
    if not db.ca_cert_identifier.startswith("rds-ca-"):
        fail("database.ca_cert_identifier", f"= {db.ca_cert_identifier!r} is not an RDS CA",
             "use a current RDS CA such as \"rds-ca-rsa2048-g1\"")
    if db.log_min_duration_ms < 100:
        fail("database.log_min_duration_ms", f"= {db.log_min_duration_ms} logs nearly every statement",
             "use 100 or more (milliseconds); statement logging of everything is never on")


def _validate_alarms(fail: Any, cfg: EnvConfig) -> None:
    a = cfg.alarms
    for address in a.email:
        if not _EMAIL_RE.match(address):
            fail("alarms.email", f"contains {address!r}, not an email address", "e.g. \"oncall@example.com\"")
    for param in a.https_endpoint_parameters:
        if param.startswith("https://"):
            fail("alarms.https_endpoint_parameters", "contains a URL (its integration key is a secret)",
                 "store the URL in an SSM SecureString parameter and put the parameter's name here")
        if not param.startswith("/"):
            fail("alarms.https_endpoint_parameters", f"contains {param!r}, not an SSM parameter name",
                 "use a name such as \"/bastionless/prod/pager-url\"")
    if not 1 <= a.free_storage_gb < cfg.database.allocated_storage_gb:
        fail("alarms.free_storage_gb", f"= {a.free_storage_gb} is out of range",
             f"use 1 to {cfg.database.allocated_storage_gb - 1} (below allocated_storage_gb)")
    if a.connections == 0 and estimated_max_connections(cfg.database.instance_class) is None:
        fail("alarms.connections", f"is 0 but the max_connections of {cfg.database.instance_class} is not known",
             "set the alarm threshold (connections) explicitly")
    p = cfg.patching
    if not p.window_schedule.startswith(("cron(", "rate(")):
        fail("patching.window_schedule", f"= {p.window_schedule!r} is not a schedule", "e.g. \"cron(0 3 ? * WED *)\"")
    if not p.agent_update_schedule.startswith(("cron(", "rate(")):
        fail("patching.agent_update_schedule", f"= {p.agent_update_schedule!r} is not a schedule",
             "e.g. \"rate(14 days)\"")
    if not 1 <= p.window_hours <= 24:
        fail("patching.window_hours", f"= {p.window_hours} is out of range", "use 1 to 24")
    if cfg.is_prod and not cfg.sandbox and not (a.email or a.https_endpoint_parameters):
        fail("alarms", "has no email and no https_endpoint_parameters for a production environment",
             "add who is paged, e.g. https_endpoint_parameters = [\"/bastionless/prod/pager-url\"]")
    if cfg.is_prod and not cfg.sandbox and not cfg.escalation.contacts:
        fail("escalation.contacts", "is empty for a production environment",
             "list who to call and how, e.g. [\"Platform on-call: PagerDuty service bastionless-prod\"]")


def overlapping_envs(cfg: EnvConfig, envs_dir: Path = ENVS_DIR) -> list[str]:
    """Warnings (not errors: separate accounts may reuse ranges) for other envs whose VPC overlaps this one's."""
    mine = ipaddress.ip_network(cfg.network.vpc_cidr)
    found: list[str] = []
    for other in available_envs(envs_dir):
        if other == cfg.name:
            continue
        try:
            theirs = load_env(other, envs_dir).network.vpc_cidr
        except ConfigError:
            continue  # a broken env file is reported when that env is used
        if mine.overlaps(ipaddress.ip_network(theirs)):
            found.append(f"{_rel(cfg.source)}: network.vpc_cidr = {cfg.network.vpc_cidr!r} overlaps {other}'s "
                         f"{theirs!r}; peering or a VPN between them would not route, so pick a free range")
    return found


def _port(fail: Any, dotted: str, value: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    if not low <= value <= 65535:
        fail(dotted, f"= {value} is not a TCP port", f"use {low} to 65535")


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(PROJECT_ROOT))
    except ValueError:
        return str(path)
