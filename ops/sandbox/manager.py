"""The offline sandbox: `up`, `status`, `down`, and what a sandbox deploy does after terraform apply.

Components, each its own process started detached (it outlives `invoke sandbox up`) and remembered
in `<state dir>/sandbox.json` by pid + start time + port:
- moto server: the AWS API (in memory: when it restarts, the stack it held is gone, and so is our
  terraform state of it);
- the local Session Manager endpoint (`ops.sandbox.ssm_endpoint`): what moto lacks, proxy for the rest;
- a real PostgreSQL on a loopback port standing in for the RDS instance;
- the RDS front (`ops.sandbox.rds_front`): what RDS does in front of PostgreSQL (TLS with the sandbox CA
  for the RDS host name, IAM token logins for members of `rds_iam`, SCRAM pass-through for the master
  user). Started after apply, when the RDS host name is known; the relay's agent connects to it.

A sandbox deploy is `deploy` here: ops.deploy.deploy with Hooks (the RDS shortcut of
ops/sandbox/fast_rds.py before the plan, `after_apply` after it). After apply: the RDS master secret gets the shape
RDS gives it, its password is set on the local PostgreSQL, the env's `[[people]]` get their IAM users
(ops/sandbox/identities.py), the RDS front is (re)started for the RDS address, that address is mapped to
the front in relay_hosts.json, and the ECS sample service's tasks are listed in ecs_tasks.json.

`up` is safe to repeat: healthy components are kept, dead or unhealthy ones restarted, and the stack
is applied again only when moto lost it or its inputs changed. One lock serializes `up` and `down`.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import re
import secrets
import shutil
import string
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import boto3

from ops import aws, facts, terraform
from ops import deploy as ops_deploy
from ops.config import PROJECT_ROOT, EnvConfig, load_env
from ops.console import Status, say
from ops.errors import ConfigError, OpsError
from ops.facts import ECS_TASKS_FILE, RELAY_HOSTS_FILE, SESSIONS_FILE
from ops.sandbox import fast_rds, identities, mfa, moto, procs, provider_server, rds_front, rds_tls
from ops.sandbox.postgres import PgServer, choose_root, find_binaries, service_user, usable_by
from ops.sandbox.procs import ProcRecord, StartError
from ops.synth import SYNTH_FILE, inputs_digest
from ops.terraform import Terraform

DEFAULT_ENV = facts.SANDBOX_ENV
STATE_FILE = "sandbox.json"
LOCK_FILE = ".sandbox.lock"
# Every process component's key in sandbox.json.
PROCESS_KEYS = ("moto", "endpoint", "postgres", "front", "provider")
ENDPOINT_MODULE = "ops.sandbox.ssm_endpoint"
FRONT_MODULE = "ops.sandbox.rds_front"
FRONT_START_TIMEOUT = 30.0
ENDPOINT_START_TIMEOUT = 60.0
# moto's stand-in for the RDS-managed secret: a fixed user and password, not what RDS writes.
_MOTO_PLACEHOLDER_PASSWORD = "P@55w0rd!"  # noqa: S105 - moto's public constant, never used as a password
_READY_RE = re.compile(r"^READY (http://\S+)\s*$", re.MULTILINE)


@dataclass(frozen=True)
class Component:
    """One row of `sandbox status`."""

    name: str
    pid: int | None
    port: int | None
    health: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """Process components must be healthy; the stack row only informs (deployed or not)."""
        return self.name == "stack" or self.health == "healthy"


@dataclass(frozen=True)
class SandboxInfo:
    env: str
    moto_url: str
    endpoint_url: str
    pg_port: int
    components: list[Component]


# ---- state -------------------------------------------------------------------------------------


def _state() -> Path:
    return aws.state_dir()


def _read_state() -> dict[str, Any]:
    return procs.read_json(_state() / STATE_FILE) or {}


def _write_state(data: dict[str, Any]) -> None:
    procs.write_json(_state() / STATE_FILE, data)


def _record(data: dict[str, Any], key: str) -> ProcRecord | None:
    raw = data.get(key)
    if not isinstance(raw, dict):
        return None
    try:
        return ProcRecord.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """One `up`/`down` at a time on a state dir (tests and a user's second terminal)."""
    state = _state()
    state.mkdir(parents=True, exist_ok=True)
    with (state / LOCK_FILE).open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def sandbox_env(name: str = DEFAULT_ENV) -> EnvConfig:
    cfg = load_env(name)
    if not cfg.sandbox:
        raise ConfigError(f"{cfg.source.name} is not a sandbox environment (it has no `sandbox = true`); the sandbox "
                          f"runs only environments that never reach AWS", next_step="invoke sandbox up --env sandbox")
    return cfg


# ---- up ------------------------------------------------------------------------------------------


def up(*, env: str = DEFAULT_ENV, deploy: bool = True, moto_port: int = 0, pg_port: int = 0,
       endpoint_port: int = 0, out: TextIO = sys.stderr, verbose: bool = False) -> SandboxInfo:
    """Start (or keep) moto, the Session Manager endpoint and PostgreSQL; then deploy the stack.

    Ports 0 mean "any free port" (or the one the component already has). Safe to run again.
    `verbose`: terraform's own output on screen instead of the summary (ops.terraform_view).
    """
    cfg = sandbox_env(env)
    with _locked():
        state = _read_state()
        _check_requested_ports(state, moto=moto_port, endpoint=endpoint_port, postgres=pg_port)
        state["env"] = cfg.name
        moto_rec, moto_new = _ensure_moto(state, port=moto_port, out=out)
        if moto_new:
            _forget_stack(state)
        endpoint_rec = _ensure_endpoint(state, moto_url=moto_rec.url, port=endpoint_port, out=out)
        server, _pg_rec = _ensure_postgres(state, port=pg_port, out=out)
        endpoints = {"default": moto_rec.url}
        if endpoint_rec is not None:
            # cloudtrail: LookupEvents of the Session Manager calls, emulated by the endpoint (moto lacks them).
            endpoints.update({"ssm": endpoint_rec.url, "ecs": endpoint_rec.url, "cloudtrail": endpoint_rec.url})
        procs.write_json(_state() / aws.ENDPOINTS_FILE, endpoints)
        # After the endpoints and the deployer's keys: the provider's environment is made of them. Only for
        # a sandbox that runs terraform (~0.6 s of CPU to start), or to replace one started before.
        if deploy or "provider" in state:
            _ensure_provider(state, cfg, out=out)
        _write_state(state)
    if deploy:
        try:
            deploy_stack(cfg, out=out, verbose=verbose)
        except OpsError:
            # The services are fine and `up` is safe to repeat: say so rather than leave them unmentioned.
            say(out, "the sandbox services keep running: fix the error and rerun `invoke sandbox up`, or stop them "
                     "with `invoke sandbox down`")
            raise
    return SandboxInfo(env=cfg.name, moto_url=moto_rec.url, endpoint_url=endpoint_rec.url if endpoint_rec else "",
                       pg_port=server.port, components=status())


def _check_requested_ports(state: dict[str, Any], **requested: int) -> None:
    """Before starting anything: a port asked for must be free, unless our own component already has it."""
    labels = {"moto": ("moto", "--moto-port"), "endpoint": ("Session Manager endpoint", "--endpoint-port"),
              "postgres": ("PostgreSQL", "--pg-port")}
    for key, port in requested.items():
        record = _record(state, key)
        if port and not (record is not None and record.port == port and procs.is_alive(record)):
            what, flag = labels[key]
            procs.pick_port(port, what=what, flag=flag)


def _ensure_moto(state: dict[str, Any], *, port: int, out: TextIO) -> tuple[ProcRecord, bool]:
    current = _record(state, "moto")
    if current is not None and procs.is_alive(current) and moto.healthy(current.url):
        _warn_port(out, "moto", current.port, port)
        return current, False
    if current is not None:
        say(out, f"moto (pid {current.pid}) is not answering; restarting it (the stack it held is lost)")
        procs.stop(current)
    chosen = procs.pick_port(port, what="moto", flag="--moto-port")
    started = time.monotonic()
    with Status(out, "starting moto server", quiet_plain=True) as status:
        record = moto.start(state=_state(), port=chosen)
        _create_identities(record.url)
        status.done(f"moto server: {record.url} with IAM enforced (pid {record.pid}, "
                    f"{time.monotonic() - started:.1f} s)")
    state["moto"] = record.to_json()
    return record, True


def _create_identities(moto_url: str) -> None:
    """The people and pipelines of an AWS account, in the emulator: an engineer (with an MFA device) who can
    only assume the stacks' roles, and a deployer (ops/iam_policies.py). Their keys go to iam.json, 0600."""
    from ops import iam_policies

    cfg_account = load_env(DEFAULT_ENV).account_id
    iam = boto3.client("iam", region_name="us-east-1", endpoint_url=moto_url,  # type: ignore[call-overload]
                       **aws.SANDBOX_CREDENTIALS)
    keys: dict[str, dict[str, str]] = {}
    for user, policy in (("engineer", iam_policies.engineer_policy(account_id=cfg_account)),
                         ("deployer", iam_policies.deployer_policy(account_id=cfg_account))):
        iam.create_user(UserName=user)
        iam.put_user_policy(UserName=user, PolicyName=f"{user}-access", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        keys[user] = {"key": key["AccessKeyId"], "secret": key["SecretAccessKey"], "session": user}
    # The engineer's MFA device: the break-glass role's trust asks for MFA (aws.sandbox_credentials presents it).
    device = iam.create_virtual_mfa_device(VirtualMFADeviceName="engineer")["VirtualMFADevice"]
    seed = device["Base32StringSeed"]
    seed = seed.decode() if isinstance(seed, bytes) else str(seed)
    iam.enable_mfa_device(UserName="engineer", SerialNumber=device["SerialNumber"],
                          AuthenticationCode1=mfa.code(seed), AuthenticationCode2=mfa.code(seed, now=time.time() + 30))
    keys["engineer"].update({"mfa_serial": device["SerialNumber"], "mfa_seed": seed})
    path = _state() / aws.IDENTITIES_FILE
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(keys, fh)
    aws.forget_assumed_roles()


def endpoint_available() -> bool:
    """The local Session Manager endpoint ships with the project; tolerate a tree without it."""
    return importlib.util.find_spec(ENDPOINT_MODULE) is not None


def _endpoint_healthy(url: str) -> bool:
    # A route the endpoint answers itself (404 for an unknown session), so moto's health does not count.
    return procs.http_ok(f"{url}/_sandbox/sessions/health-check")


def _ensure_endpoint(state: dict[str, Any], *, moto_url: str, port: int, out: TextIO) -> ProcRecord | None:
    current = _record(state, "endpoint")
    if (current is not None and procs.is_alive(current) and state.get("endpoint_moto") == moto_url
            and _endpoint_healthy(current.url)):
        _warn_port(out, "Session Manager endpoint", current.port, port)
        return current
    if current is not None:
        procs.stop(current)
        state.pop("endpoint", None)
    if not endpoint_available():
        say(out, f"warning: {ENDPOINT_MODULE} is missing: no local Session Manager endpoint "
                  "(tunnel and ecs-shell will not work in the sandbox)")
        return None
    chosen = procs.pick_port(port, what="Session Manager endpoint", flag="--endpoint-port")
    log = _state() / "ssm_endpoint.log"
    offset = log.stat().st_size if log.exists() else 0
    started = time.monotonic()
    proc = procs.start_detached(
        [sys.executable, "-m", ENDPOINT_MODULE, "--host", procs.LOOPBACK, "--port", str(chosen),
         "--moto-url", moto_url, "--state-dir", str(_state())],
        log=log, cwd=PROJECT_ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = ""

    def ready() -> bool:
        nonlocal url
        with contextlib.suppress(FileNotFoundError):
            with log.open("rb") as fh:
                fh.seek(offset)
                found = _READY_RE.search(fh.read().decode(errors="replace"))
                url = found.group(1) if found else ""
        return bool(url)

    with Status(out, "starting the Session Manager endpoint", quiet_plain=True):
        started_ok = procs.wait_until(ready, timeout=ENDPOINT_START_TIMEOUT, alive=lambda: proc.poll() is None)
    if not started_ok:
        with contextlib.suppress(StartError):
            procs.stop(procs.record_for(proc, port=chosen, log=log))
        raise StartError(f"the Session Manager endpoint did not start: {procs.log_tail(log) or 'no output'}",
                         next_step=f"see {log}")
    record = procs.record_for(proc, port=int(url.rsplit(":", 1)[1].split("/")[0]), log=log, url=url.rstrip("/"))
    say(out, f"Session Manager endpoint: {record.url} (pid {record.pid}, {time.monotonic() - started:.1f} s)")
    state["endpoint"] = record.to_json()
    state["endpoint_moto"] = moto_url
    return record


def _ensure_provider(state: dict[str, Any], cfg: EnvConfig, *, out: TextIO) -> None:
    """The AWS provider server terraform reattaches to (ops/sandbox/provider_server.py): kept while it answers
    and was started with today's binary and environment, else (re)started; none where it is switched off or
    no provider is installed or mirrored yet (terraform then starts its own, as everywhere)."""
    current = _record(state, "provider")
    binary = terraform.installed_provider(cfg) if provider_server.wanted() else None
    if current is not None and procs.is_alive(current):
        if (binary is not None and provider_server.matches(_state(), provider_server.fingerprint(cfg, binary))
                and provider_server.healthy(_state())):
            return
        procs.stop(current)
    state.pop("provider", None)
    provider_server.forget(_state())
    if binary is None:
        return
    # No line of its own: `sandbox status` has its row, and `up` says enough already (its budget is tested).
    with Status(out, "starting the AWS provider server", quiet_plain=True):
        record = provider_server.start(cfg, binary=binary, state_dir=_state())
    state["provider"] = record.to_json()


def _pg_server(state: dict[str, Any]) -> PgServer | None:
    raw = state.get("postgres_server")
    if not isinstance(raw, dict):
        return None
    try:
        return PgServer.from_json(raw)
    except (KeyError, TypeError, ValueError):
        return None


def _ensure_postgres(state: dict[str, Any], *, port: int, out: TextIO) -> tuple[PgServer, ProcRecord]:
    server = _pg_server(state)
    current = _record(state, "postgres")
    if server is not None and current is not None and procs.is_alive(current) and server.healthy():
        _warn_port(out, "PostgreSQL", server.port, port)
        return server, current
    if server is not None and current is not None:
        server.stop(current)
    if server is None or not server.data.is_dir():
        user = service_user()
        root = choose_root(_state(), user=user)
        server = PgServer(root=root, port=0, binaries=usable_by(find_binaries(), user=user, root=root), user=user)
    # Keep its port across restarts when it is free (a DBeaver config may point at it), unless told otherwise.
    keep = server.port if port == 0 and server.port and procs.port_free(server.port) else 0
    chosen = procs.pick_port(port or keep, what="PostgreSQL", flag="--pg-port")
    server = PgServer(root=server.root, port=chosen, binaries=server.binaries, user=server.user)
    started = time.monotonic()
    state["postgres_server"] = server.to_json()
    with Status(out, "starting PostgreSQL", quiet_plain=True) as status:
        record = server.start()
        status.done(f"PostgreSQL: 127.0.0.1:{server.port}, {server.binaries.describe()} (pid {record.pid}, "
                    f"{time.monotonic() - started:.1f} s)")
    state["postgres"] = record.to_json()
    # The master user's password is set again from the secret by after_apply.
    state.pop("credentials_set", None)
    return server, record


def _warn_port(out: TextIO, what: str, have: int, asked: int) -> None:
    if asked and asked != have:
        say(out, f"note: {what} is already running on port {have}; `invoke sandbox down` first to move it to {asked}")


def _forget_stack(state: dict[str, Any]) -> None:
    """moto started afresh holds nothing: terraform state and everything derived from the stack go."""
    state.pop("deployed", None)
    for name in (RELAY_HOSTS_FILE, ECS_TASKS_FILE, SESSIONS_FILE):
        (_state() / name).unlink(missing_ok=True)
    _remove_tfstate()


def _tfstate_files() -> list[Path]:
    tf_dir = _state() / "terraform"
    if not tf_dir.is_dir():
        return []
    found: list[Path] = []
    for path in tf_dir.iterdir():
        stem = path.name.lstrip(".").split(".tfstate", 1)[0]
        if ".tfstate" in path.name and _is_sandbox_env(stem):
            found.append(path)
    return found


def _is_sandbox_env(name: str) -> bool:
    try:
        return load_env(name).sandbox
    except OpsError:
        return False


def _remove_tfstate() -> None:
    for path in _tfstate_files():
        path.unlink(missing_ok=True)


# ---- deploy and after_apply --------------------------------------------------------------------


def deploy(cfg: EnvConfig, *, yes: bool = False, ask: ops_deploy.Ask = ops_deploy.ask_terminal,
           out: TextIO = sys.stderr, fast_rds_shortcut: bool | None = None,
           verbose: bool = False) -> ops_deploy.DeployResult:
    """`invoke deploy` of a sandbox env: ops.deploy.deploy, then wire up the database (after_apply).

    `fast_rds_shortcut`: create the RDS instance through the emulator's API and import it instead of
    waiting out the provider's fixed waiter (ops/sandbox/fast_rds.py). Default: on, unless the
    environment sets BASTIONLESS_SANDBOX_RDS_SHORTCUT=0 (to measure it, or to rule it out).
    """
    if not cfg.sandbox:
        raise ValueError(f"the sandbox deploy is for sandbox environments, not {cfg.name}")
    hooks = ops_deploy.Hooks(adopt=_adopt_database if _rds_shortcut(fast_rds_shortcut) else None,
                             after_apply=lambda c, o: after_apply(c, out=o))
    return ops_deploy.deploy(cfg, yes=yes, ask=ask, out=out, hooks=hooks, verbose=verbose)


def destroy(cfg: EnvConfig, *, yes: bool = False, force_deletion_protection: bool = False,
            ask: ops_deploy.Ask = ops_deploy.ask_terminal, out: TextIO = sys.stderr, verbose: bool = False) -> None:
    """`invoke destroy` of a sandbox env: ops.deploy.destroy, then forget the stack (after_destroy)."""
    hooks = ops_deploy.Hooks(after_destroy=after_destroy,
                             before_destroy=fast_rds.release_database if _rds_shortcut(None) else None)
    ops_deploy.destroy(cfg, yes=yes, force_deletion_protection=force_deletion_protection, ask=ask, out=out,
                       hooks=hooks, verbose=verbose)


def _rds_shortcut(requested: bool | None) -> bool:
    return os.environ.get(facts.RDS_SHORTCUT_ENV, "1") != "0" if requested is None else requested


def _adopt_database(cfg: EnvConfig, tf: Terraform, out: TextIO) -> bool:
    config = json.loads((tf.workdir / SYNTH_FILE).read_text())
    return fast_rds.adopt_database(cfg, tf, config=config, out=out)


def deploy_stack(cfg: EnvConfig, *, out: TextIO = sys.stderr, verbose: bool = False) -> None:
    """Apply the sandbox stack unless this moto already holds exactly this synthesized stack."""

    state = _read_state()
    marker = state.get("deployed", {}).get(cfg.name) if isinstance(state.get("deployed"), dict) else None
    current = {"moto": state.get("moto", {}).get("create_time"), "inputs": inputs_digest(cfg)}
    tfstate = aws.state_dir() / "terraform" / f"{cfg.name}.tfstate"
    if current["inputs"] and marker == current and tfstate.is_file():
        say(out, f"stack {cfg.stack_name}: already applied to this sandbox, inputs unchanged")
        after_apply(cfg, out=out)
        return
    deploy(cfg, yes=True, out=out, verbose=verbose)


def mark_deployed(cfg: EnvConfig) -> None:
    with _locked():
        state = _read_state()
        deployed: dict[str, Any] = state["deployed"] if isinstance(state.get("deployed"), dict) else {}
        deployed[cfg.name] = {"moto": state.get("moto", {}).get("create_time"), "inputs": inputs_digest(cfg)}
        state["deployed"] = deployed
        _write_state(state)


def after_apply(cfg: EnvConfig, *, out: TextIO = sys.stderr) -> None:
    """After terraform apply on the sandbox: credentials as RDS keeps them, the relay's network, ECS tasks."""
    if not cfg.sandbox:
        raise ValueError(f"after_apply is for sandbox environments, not {cfg.name}")
    # What RDS and ECS would do themselves: the emulator acts, not the deployer.
    with aws.acting_as("emulator"):
        _after_apply(cfg, out=out)


def _after_apply(cfg: EnvConfig, *, out: TextIO) -> None:
    state = _read_state()
    server = _pg_server(state)
    if server is None or not procs.is_alive(_record(state, "postgres") or _dead()):
        raise aws.SandboxNotRunningError("the sandbox PostgreSQL is not running", next_step="invoke sandbox up")
    db = _db_instance(cfg)
    address, port = db["Endpoint"]["Address"], int(db["Endpoint"]["Port"])
    username, password = master_credentials(cfg, db)
    server.ensure_master_user(username=username, password=password, dbname=cfg.database.name)
    if cfg.people:
        identities.provision(cfg)
    with _locked():
        state = _read_state()
        front = _ensure_front(state, cfg, server, address=address, port=port, out=out)
        _write_state(state)
    hosts = procs.read_json(_state() / RELAY_HOSTS_FILE) or {}
    hosts[f"{address}:{port}"] = f"127.0.0.1:{front.port}"
    procs.write_json(_state() / RELAY_HOSTS_FILE, hosts)
    people = f"; {len(cfg.people)} people log in with IAM tokens" if cfg.people else ""
    say(out, f"sandbox database: {address}:{port} is the RDS front 127.0.0.1:{front.port} (TLS, IAM auth) in "
              f"front of the local PostgreSQL 127.0.0.1:{server.port}; master password set from Secrets "
              f"Manager{people}")
    if cfg.ecs.enabled:
        _ecs_tasks(cfg, out=out)
    mark_deployed(cfg)


def _front_config(server: PgServer, *, cfg: EnvConfig, address: str, port: int) -> dict[str, Any]:
    return {"host_name": address, "rds_port": port, "region": cfg.region, "pg_port": server.port,
            "pg_socket_dir": str(server.socket_dir)}


def _ensure_front(state: dict[str, Any], cfg: EnvConfig, server: PgServer, *, address: str, port: int,
                  out: TextIO) -> ProcRecord:
    """The RDS front for `address:port`, kept while it is healthy and serves the same database; else
    (re)started, with a new sandbox CA and certificate when the host name changed."""
    wanted = _front_config(server, cfg=cfg, address=address, port=port)
    current = _record(state, "front")
    if (current is not None and procs.is_alive(current) and state.get("front_config") == wanted
            and rds_front.probe(current.port)):
        return current
    if current is not None:
        procs.stop(current)
        state.pop("front", None)
    certs_dir = _state() / facts.RDS_FRONT_DIR
    certs = rds_tls.FrontCertificate(ca=certs_dir / rds_tls.CA_FILE, cert=certs_dir / rds_tls.CERT_FILE,
                                     key=certs_dir / rds_tls.KEY_FILE)
    if state.get("front_host") != address or not all(p.is_file() for p in (certs.ca, certs.cert, certs.key)):
        certs = rds_tls.issue(certs_dir, host_name=address)
        state["front_host"] = address
    chosen = procs.free_port()
    log = _state() / "rds_front.log"
    started = time.monotonic()
    proc = procs.start_detached(
        [sys.executable, "-m", FRONT_MODULE, "--port", str(chosen), "--host-name", address, "--rds-port", str(port),
         "--region", cfg.region, "--pg-port", str(server.port), "--pg-socket-dir", str(server.socket_dir),
         "--cert", str(certs.cert), "--key", str(certs.key)],
        log=log, cwd=PROJECT_ROOT, env={**os.environ, facts.STATE_DIR_ENV: str(_state()), "PYTHONUNBUFFERED": "1"})
    record = procs.record_for(proc, port=chosen, log=log, url=f"postgresql://127.0.0.1:{chosen}")
    if not procs.wait_until(lambda: rds_front.probe(chosen), timeout=FRONT_START_TIMEOUT,
                            alive=lambda: proc.poll() is None):
        with contextlib.suppress(StartError):
            procs.stop(record)
        raise StartError(f"the RDS front did not start: {procs.log_tail(log) or 'no output'}", next_step=f"see {log}")
    say(out, f"RDS front: 127.0.0.1:{chosen} for {address}:{port} (pid {record.pid}, "
             f"{time.monotonic() - started:.1f} s)")
    state["front"] = record.to_json()
    state["front_config"] = wanted
    return record


def after_destroy(cfg: EnvConfig) -> None:
    """The stack is gone: so are the relay's route to the database and the emulated ECS tasks."""
    with _locked():
        state = _read_state()
        deployed = state.get("deployed")
        if isinstance(deployed, dict):
            deployed.pop(cfg.name, None)
        _write_state(state)
        for name in (RELAY_HOSTS_FILE, ECS_TASKS_FILE):
            (_state() / name).unlink(missing_ok=True)


def _dead() -> ProcRecord:
    return ProcRecord(pid=0, create_time=0.0, port=0, log="")


def _db_instance(cfg: EnvConfig) -> dict[str, Any]:
    rds = aws.client(cfg, "rds")
    try:
        found = rds.describe_db_instances(DBInstanceIdentifier=cfg.stack_name)["DBInstances"]
    except rds.exceptions.DBInstanceNotFoundFault:
        found = []
    if not found:
        raise OpsError(f"the sandbox has no RDS instance {cfg.stack_name}; the stack is not deployed",
                       next_step=f"invoke deploy --env {cfg.name} --yes")
    instance: dict[str, Any] = found[0]
    return instance


def master_credentials(cfg: EnvConfig, db: dict[str, Any]) -> tuple[str, str]:
    """The master user's secret as RDS keeps it: JSON {"username", "password"} in Secrets Manager.

    moto creates the managed secret but fills it with a fixed placeholder user and password; RDS
    writes the master username and a generated password. Where the emulator falls short, we finish
    the job the way RDS would (new secret version, or the whole secret), so every later task reads
    the secret exactly as it does in prod.
    """
    sm = aws.client(cfg, "secretsmanager")
    username = str(db.get("MasterUsername") or cfg.database.username)
    arn = (db.get("MasterUserSecret") or {}).get("SecretArn", "")
    current: dict[str, Any] = {}
    if arn:
        _check_not_deleted(sm, arn)
        try:
            current = json.loads(sm.get_secret_value(SecretId=arn)["SecretString"])
        except (sm.exceptions.ResourceNotFoundException, ValueError, KeyError):
            current = {}
    password = str(current.get("password", ""))
    if current.get("username") == username and password and password != _MOTO_PLACEHOLDER_PASSWORD:
        return username, password
    password = _generate_password()
    body = json.dumps({"username": username, "password": password})
    if arn:
        sm.put_secret_value(SecretId=arn, SecretString=body)
    else:
        sm.create_secret(
            Name=f"rds!db-{uuid.uuid4()}", SecretString=body,
            Description=f"The secret associated with the primary RDS DB instance: {db.get('DBInstanceArn', '')}",
            Tags=[{"Key": "aws:rds:primaryDBInstanceArn", "Value": str(db.get("DBInstanceArn", ""))},
                  {"Key": "aws:secretsmanager:owningService", "Value": "rds"}])
    return username, password


# What RDS puts in a managed master password: printable ASCII except '/', '"', '@' and space.
RDS_PASSWORD_ALPHABET = "".join(c for c in map(chr, range(33, 127)) if c not in '/"@')


def _check_not_deleted(sm: Any, arn: str) -> None:
    """Deleted (or scheduled for deletion) behind RDS's back: say so and how to get it back, once."""
    try:
        deleted = bool(sm.describe_secret(SecretId=arn).get("DeletedDate"))
    except sm.exceptions.ResourceNotFoundException:
        deleted = True
    if deleted:
        raise OpsError(f"the database's master secret {arn} is deleted or scheduled for deletion; nothing was "
                       f"changed", next_step=f"aws secretsmanager restore-secret --secret-id '{arn}', then rerun "
                                             f"(in the sandbox: invoke sandbox down && invoke sandbox up)")


def _generate_password() -> str:
    # Punctuation included, as RDS does ('%', '#', '&', ':' ...): a URL or a .pgpass line built without
    # quoting breaks here exactly as it would in prod. One of each class, so every password shows it.
    pick = secrets.choice
    chars = [pick(string.ascii_lowercase), pick(string.ascii_uppercase), pick(string.digits), "%", pick("#&:?=+;")]
    chars += [pick(RDS_PASSWORD_ALPHABET) for _ in range(41 - len(chars))]
    secrets.SystemRandom().shuffle(chars)
    return "".join(chars)


def _ecs_tasks(cfg: EnvConfig, *, out: TextIO) -> None:
    """The sample service's tasks, written where the endpoint serves them (moto cannot run awsvpc tasks).

    Also turns on execute-command when moto dropped it: moto ignores `enableExecuteCommand` in
    CreateService (it keeps it from UpdateService); our configuration sets it.
    """
    if not cfg.ecs.sample_service:
        return
    ecs = aws.client(cfg, "ecs")
    service_name = f"{cfg.stack_name}-sample"
    services = ecs.describe_services(cluster=cfg.stack_name, services=[service_name]).get("services", [])
    service = next((s for s in services if s.get("status") == "ACTIVE"), None)
    if service is None:
        return
    if not service.get("enableExecuteCommand"):
        service = ecs.update_service(cluster=cfg.stack_name, service=service_name,
                                     enableExecuteCommand=True)["service"]
    path = _state() / ECS_TASKS_FILE
    existing = procs.read_json(path) or {}
    tasks = [t for t in existing.get("tasks", []) if isinstance(t, dict)
             and t.get("group") == f"service:{service_name}" and t.get("clusterArn") == service["clusterArn"]]
    want = max(int(service.get("desiredCount", 1)), 1)
    while len(tasks) < want:
        tasks.append(_task(service, cfg, task_id=uuid.uuid4().hex))
    tasks = tasks[:want]
    for task in tasks:
        task["taskDefinitionArn"] = service["taskDefinition"]
    others = [t for t in existing.get("tasks", []) if t not in tasks and isinstance(t, dict)
              and t.get("clusterArn") != service["clusterArn"]]
    procs.write_json(path, {"tasks": others + tasks})
    say(out, f"sandbox ECS: {len(tasks)} task(s) of {service_name} with ECS Exec")


def _task(service: dict[str, Any], cfg: EnvConfig, *, task_id: str) -> dict[str, Any]:
    cluster_arn = str(service["clusterArn"])
    prefix = cluster_arn.split(":cluster/")[0]
    cluster = cluster_arn.rsplit("/", 1)[-1]
    container = cfg.ecs.default_container or "app"
    return {
        "taskArn": f"{prefix}:task/{cluster}/{task_id}",
        "clusterArn": cluster_arn,
        "taskDefinitionArn": service["taskDefinition"],
        "lastStatus": "RUNNING", "desiredStatus": "RUNNING", "launchType": "FARGATE",
        "platformVersion": "1.4.0", "platformFamily": "Linux", "enableExecuteCommand": True,
        "group": f"service:{service['serviceName']}", "availabilityZone": f"{cfg.region}a",
        "startedAt": time.time(),
        "containers": [{"name": container, "containerArn": f"{prefix}:container/{cluster}/{task_id}/{uuid.uuid4()}",
                        "runtimeId": f"{task_id}-{container}", "lastStatus": "RUNNING",
                        "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": "RUNNING"}]}],
    }


# ---- status --------------------------------------------------------------------------------------


def status() -> list[Component]:
    """One row per component: pid, port and a health probe that exercises it for real."""
    state = _read_state()
    rows: list[Component] = []
    moto_rec = _record(state, "moto")
    rows.append(_row("moto", moto_rec, lambda r: moto.healthy(r.url), detail=moto_rec.url if moto_rec else ""))
    ep = _record(state, "endpoint")
    if ep is None and not endpoint_available():
        rows.append(Component("ssm-endpoint", None, None, "missing", f"{ENDPOINT_MODULE} is not installed"))
    else:
        rows.append(_row("ssm-endpoint", ep, lambda r: _endpoint_healthy(r.url), detail=ep.url if ep else ""))
    server = _pg_server(state)
    pg = _record(state, "postgres")
    rows.append(_row("postgres", pg, lambda _r: server is not None and server.healthy(),
                     detail=server.binaries.describe() if server else ""))
    front = _record(state, "front")
    if front is not None:  # started after apply: no row before the stack is deployed
        host = str((state.get("front_config") or {}).get("host_name", ""))
        rows.append(_row("rds-front", front, lambda r: rds_front.probe(r.port), detail=f"TLS + IAM auth for {host}"))
    provider = _record(state, "provider")
    if provider is not None:  # none where switched off or nothing is installed yet: terraform starts its own
        rows.append(_row("aws-provider", provider, lambda _r: provider_server.healthy(_state()),
                         detail="terraform reattaches to it"))
    rows.append(_stack_row(state))
    return rows


def _row(name: str, record: ProcRecord | None, probe: Any, *, detail: str) -> Component:
    if record is None:
        return Component(name, None, None, "stopped", detail)
    if not procs.is_alive(record):
        return Component(name, record.pid, record.port, "dead", f"see {record.log}")
    return Component(name, record.pid, record.port, "healthy" if probe(record) else "unhealthy", detail)


def _stack_row(state: dict[str, Any]) -> Component:
    env = str(state.get("env") or DEFAULT_ENV)
    path = _state() / "terraform" / f"{env}.tfstate"
    data = procs.read_json(path)
    if not data or not data.get("resources"):
        return Component("stack", None, None, "not deployed", f"invoke deploy --env {env} --yes")
    count = sum(len(r.get("instances", [])) for r in data["resources"] if r.get("mode") == "managed")
    return Component("stack", None, None, "applied", f"bastionless-{env}: {count} resources")


def format_status(rows: list[Component]) -> str:
    header = ("component", "pid", "port", "health", "detail")
    table = [header] + [(r.name, str(r.pid or "-"), str(r.port or "-"), r.health, r.detail) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header) - 1)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])) + "  " + row[-1] for row in table]
    return "\n".join(line.rstrip() for line in lines)


def running() -> bool:
    """True if any sandbox process is alive."""
    state = _read_state()
    return any(r is not None and procs.is_alive(r) for r in (_record(state, k) for k in PROCESS_KEYS))


# ---- down ----------------------------------------------------------------------------------------


def down(*, out: TextIO = sys.stderr) -> list[str]:
    """Stop every sandbox process and remove the sandbox's state. Returns what was stopped."""
    stopped: list[str] = []
    with _locked():
        state = _read_state()
        _close_tunnels(out)
        for key, label in (("provider", "AWS provider server"), ("front", "RDS front"),
                           ("endpoint", "Session Manager endpoint"), ("moto", "moto server")):
            record = _record(state, key)
            if record is not None and procs.is_alive(record):
                procs.stop(record)
                stopped.append(f"{label} (pid {record.pid})")
        server = _pg_server(state)
        pg = _record(state, "postgres")
        if server is not None:
            if pg is not None and procs.is_alive(pg):
                server.stop(pg)
                stopped.append(f"PostgreSQL (pid {pg.pid})")
            server.remove()
        left = [f"{key} pid {r.pid}" for key in PROCESS_KEYS
                if (r := _record(state, key)) is not None and procs.is_alive(r)]
        if left:
            raise OpsError(f"could not stop {', '.join(left)}; the sandbox state is kept so `down` can retry",
                           next_step="invoke sandbox down")
        _remove_state_files()
    say(out, ("stopped " + ", ".join(stopped)) if stopped else "the sandbox was not running")
    return stopped


def _close_tunnels(out: TextIO) -> None:
    """Tunnels into the sandbox would dangle once it is gone: close them first (if that module exists)."""
    try:
        # Optional: the tunnel module may not be part of this tree.
        tunnels_state: Any = importlib.import_module("ops.tunnels_state")
    except ImportError:
        return
    for record in tunnels_state.list_tunnels():
        env = str(getattr(record, "env", ""))
        if env and _is_sandbox_env(env):
            with contextlib.suppress(OpsError):
                tunnels_state.close(env)
                say(out, f"closed the tunnel to {env}")


def _remove_state_files() -> None:
    state = _state()
    for name in (STATE_FILE, aws.ENDPOINTS_FILE, RELAY_HOSTS_FILE, ECS_TASKS_FILE, SESSIONS_FILE,
                 aws.IDENTITIES_FILE, identities.FILE, "moto.log", "ssm_endpoint.log", "rds_front.log",
                 facts.PROVIDER_SERVER_FILE, provider_server.LOG_FILE):
        (state / name).unlink(missing_ok=True)
    shutil.rmtree(state / "postgres", ignore_errors=True)
    shutil.rmtree(state / facts.RDS_FRONT_DIR, ignore_errors=True)
    # terraform state of the stack moto held; terraform's data dir (providers) stays as a cache.
    _remove_tfstate()
