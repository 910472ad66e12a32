"""Run terraform on a synthesized stack: init, validate, plan, apply, destroy, outputs.

What the user sees (ops.terraform_view): terraform's own output goes to one log file per command
(`<state dir>/terraform/<env>/logs/`, its path printed once); the screen shows a live line while
terraform works, the plan as a short table, apply progress, a one-line result, and on failure
terraform's error block in full. `verbose=True` streams terraform's own output instead, as
terraform prints it. A non-zero exit becomes a CommandFailedError carrying terraform's exit code.
Terraform runs in its own process group so a Ctrl-C reaches it only through us: we forward it and
then wait until terraform has stopped and released its state lock, instead of dying first and
leaving it orphaned with the lock held. Because it is not in the terminal's foreground group,
terraform never prompts (`-input=false`); callers confirm before calling `apply`/`destroy` (cli/deploy.py).

Per environment, under `<state dir>/terraform/<env>/`: the data dir (TF_DATA_DIR, so re-synthesis
never throws away providers or backend settings) and, when a provider mirror is in use, the CLI
config that points terraform at it. `init` is skipped when nothing it depends on has changed.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from ops import aws, facts, terraform_view
from ops.config import EnvConfig
from ops.errors import CommandFailedError, OpsError, ToolMissingError
from ops.fileio import atomic_write, read_json
from ops.terraform_view import PlanSummary, RunLog

# The S3 backend's native lockfile (stacks/backend.py) needs 1.10; the generated required_version agrees.
MIN_TERRAFORM = (1, 10)
MIRROR_ENV = facts.PROVIDER_MIRROR_ENV
DEFAULT_AWS_PROVIDER_VERSION = "5.100.0"
INSTALL_HINT = "install Terraform >= 1.10 (https://developer.hashicorp.com/terraform/install) and put it on PATH"
INIT_STAMP = "bastionless-init.json"
_SYNTH_FILE = "cdk.tf.json"
_DATA_DIR = "data"  # TF_DATA_DIR of the runs with a backend, under env_home
AWS_PROVIDER = "registry.terraform.io/hashicorp/aws"
_VERSION_RE = re.compile(r"^v?(\d+)\.(\d+)\.(\d+)")
# Where air-gapped machines usually keep a `terraform providers mirror` (checked in this order) when
# neither the env nor BASTIONLESS_PROVIDER_MIRROR names one: every entry point shares this discovery.
MIRROR_PLACES = ("/opt/tf-plugins", "/usr/local/share/terraform/plugins", "/usr/share/terraform/plugins",
                 "~/.terraform.d/plugins")
LOCK_NOTE_STAMP = "lock-file-note-shown"
# Go's garbage collector for terraform and the provider (which inherits terraform's environment). Every
# command that loads the AWS provider decodes its whole schema (~13 MB as JSON, every resource type, not
# only the stack's), and at Go's default (GOGC=100) collecting that garbage is ~25 % of the command's CPU.
# 400 trades ~150 MB more peak memory per process for that time (bench/terraform); GOMEMLIMIT keeps a
# very large configuration from taking 5x its live heap. A value the user exported wins.
GO_RUNTIME_DEFAULTS = {"GOGC": "400", "GOMEMLIMIT": "1GiB"}
# What the AWS provider reads from its environment besides AWS_*: a provider server (below) started with
# other values than a run would give its own provider is not used by that run.
_PROVIDER_ENV_NAMES = frozenset({"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR",
                                 "GODEBUG", "TF_APPEND_USER_AGENT"})
REATTACH_ENV = "TF_REATTACH_PROVIDERS"


def child_env(environ: Mapping[str, str], extra: Mapping[str, str]) -> dict[str, str]:
    """The environment of every terraform run: the caller's, `extra`, no prompts or update checks, and the
    Go runtime settings above unless the user exported their own."""
    env = {**environ, **extra, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    for name, value in GO_RUNTIME_DEFAULTS.items():
        env.setdefault(name, value)
    return env


def env_home(cfg: EnvConfig) -> Path:
    """Where terraform's data dir, CLI config, logs and plans of an environment live."""
    return aws.state_dir() / "terraform" / cfg.name


class Terraform:
    """terraform for one environment, run in `workdir` (the directory holding cdk.tf.json)."""

    def __init__(self, cfg: EnvConfig, workdir: Path, extra_env: Mapping[str, str] | None = None, *,
                 verbose: bool = False, out: TextIO | None = None) -> None:
        self.cfg = cfg
        self.workdir = Path(workdir)
        self.extra_env = dict(extra_env or {})
        self.home = env_home(cfg)
        self.verbose = verbose
        self.out = out if out is not None else sys.stderr
        self.log = RunLog(self.home / "logs", out=self.out)
        # The summary of the last saved plan, by plan file: apply shows progress against its total.
        self.last_plan: PlanSummary | None = None
        self._plans: dict[str, PlanSummary] = {}
        self._prepared_env: dict[str, str] | None = None

    # ---- paths -------------------------------------------------------------------------------

    @property
    def local_state_path(self) -> Path:
        """Where the local backend keeps state (sandbox and other `backend = "local"` envs)."""
        return aws.state_dir() / "terraform" / f"{self.cfg.name}.tfstate"

    @property
    def local_lock_path(self) -> Path:
        """The local backend's lock file; it exists exactly while a terraform run holds the lock."""
        state = self.local_state_path
        return state.with_name(f".{state.name}.lock.info")

    def data_dir(self, *, backend: bool = True) -> Path:
        # `init -backend=false` (validate) must not overwrite the backend settings of the real one.
        return self.home / (_DATA_DIR if backend else "data-nobackend")

    @property
    def cli_config_path(self) -> Path:
        return self.home / "cli.tfrc"

    # ---- commands ----------------------------------------------------------------------------

    def init(self, *, backend: bool = True, force: bool = False) -> bool:
        """`terraform init`; returns False when skipped because the last init is still current."""
        env = self._env(backend=backend, reattach=False)
        args = ["init", "-input=false", *self._color(), f"-backend={'true' if backend else 'false'}"]
        if backend and self.cfg.state.backend == "local":
            self.local_state_path.parent.mkdir(parents=True, exist_ok=True)
            args.append(f"-backend-config=path={self.local_state_path}")
        key = self._init_key(args, env)
        if not force and self._init_current(key, backend=backend):
            return False
        self._stamp_path(backend).unlink(missing_ok=True)
        try:
            # init's chatter is progress, not a result: keep stdout clean for `outputs --json` callers.
            lines = self._run(args, env=env, what="terraform init", stdout=sys.stderr, label="terraform init")[1]
        except CommandFailedError as exc:
            raise CommandFailedError(f"{exc.message}; {self._init_hint(env)}", returncode=exc.returncode) from None
        self.data_dir(backend=backend).mkdir(parents=True, exist_ok=True)
        self._stamp_path(backend).write_text(json.dumps({"key": key}) + "\n")
        self._explain_lock_warning(lines)
        return True

    def _init_hint(self, env: Mapping[str, str]) -> str:
        if env.get("TF_CLI_CONFIG_FILE") == str(self.cli_config_path):
            return (f"the providers come from the mirror named in {self.cli_config_path.name} "
                    f"({provider_mirror(self.cfg)}); check it holds what the stack pins")
        return (f"offline? terraform downloads providers from the registry unless {MIRROR_ENV} (or [terraform] "
                f"provider_mirror in {self.cfg.source.name}) names a `terraform providers mirror` directory")

    def _explain_lock_warning(self, lines: Sequence[str]) -> None:
        """Say once per env why terraform warns about an incomplete lock file (README: provider lock file)."""
        if not any("Incomplete lock file information" in ln for ln in lines):
            return
        stamp = self.home / LOCK_NOTE_STAMP
        if stamp.exists():
            return
        terraform_view.note(self.out, "note: terraform's \"Incomplete lock file information\" warning is expected: "
                            "a provider from a mirror records checksums for this platform only (README: Provider "
                            "lock file); shown once")
        stamp.touch()

    def validate(self) -> None:
        """`terraform init -backend=false` (when needed) and `terraform validate`."""
        self.init(backend=False)
        self._run(["validate", *self._color()], env=self._env(backend=False), what="terraform validate",
                  label=f"terraform validate {self.cfg.name}")

    def plan(self, *, detailed_exitcode: bool = False, destroy: bool = False, out: Path | None = None,
             replace: Sequence[str] = (), refresh: bool = True) -> int:
        """`terraform plan`. Returns 0, or 2 with `detailed_exitcode` when there are changes.

        `out` (a saved plan for `apply(plan_file=...)`) is relative to the stack directory unless absolute.
        `replace`: resource addresses to recreate even though nothing changed (`-replace=ADDRESS`).
        `refresh=False` (`-refresh=false`): plan against the state as it is, for a caller that wrote every
        object in it moments ago; every other plan reads each object back first, to find drift.
        """
        self.init()
        # Always: exit code 2 tells changes from none. Callers get 0 unless they asked.
        args = ["plan", "-input=false", *self._color(), "-detailed-exitcode"]
        if destroy:
            args.append("-destroy")
        if not refresh:
            args.append("-refresh=false")
        args += [f"-replace={address}" for address in replace]
        # The summary falls back on a saved plan when the text does not add up: make one when none was asked for.
        saved = out if out is not None or self.verbose else self._private_plan("plan.tfplan")
        if saved is not None:
            args.append(f"-out={saved}")
        try:
            code, lines = self._run(args, env=self._env(), what="terraform plan", ok=(0, 2),
                                    label=f"terraform plan {self.cfg.name}")
            self.last_plan = None
            if not self.verbose and saved is not None:
                path = saved if saved.is_absolute() else self.workdir / saved
                summary = terraform_view.summary_from_plan_text(lines) if code == 2 else terraform_view.PlanSummary()
                if summary is None:
                    summary = terraform_view.summarize(self.show_json(path))
                self.last_plan = summary
                self._plans[str(path)] = self.last_plan
                if self.last_plan.changes:
                    terraform_view.print_plan(self.out, self.cfg.name, self.last_plan)
        finally:
            if saved is not None and out is None:
                saved.unlink(missing_ok=True)
        return code if detailed_exitcode else 0

    def _private_plan(self, name: str) -> Path:
        # Saved plans can hold sensitive values: private, next to terraform's data dir.
        folder = self.home / "plans"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        return folder / f"{os.getpid()}-{name}"

    def show_json(self, plan_file: Path) -> dict[str, Any]:
        """`terraform show -json` of a saved plan (read by us only; values are never printed)."""
        proc = self._capture(["show", "-json", "-no-color", str(plan_file)], env=self._env())
        try:
            data = json.loads(proc.stdout or "{}")
        except ValueError as exc:
            raise OpsError(f"terraform show -json printed something that is not JSON ({exc})") from None
        return data if isinstance(data, dict) else {}

    def apply(self, *, plan_file: Path | None = None, auto_approve: bool = False, targets: Sequence[str] = ()) -> None:
        """`terraform apply` of a saved plan, or of a fresh plan when `auto_approve` (already confirmed).

        `targets` limits a fresh plan to those resources and what they depend on (`-target`).
        """
        if plan_file is None and not auto_approve:
            raise ValueError("apply needs a saved plan_file or auto_approve=True: terraform cannot prompt here; "
                             "confirm first, then pass auto_approve=True")
        self.init()
        args = ["apply", "-input=false", *self._color()]
        args += [str(plan_file)] if plan_file is not None else ["-auto-approve", *(f"-target={t}" for t in targets)]
        summary = None
        if plan_file is not None:
            path = plan_file if plan_file.is_absolute() else self.workdir / plan_file
            summary = self._plans.get(str(path))
        command = _apply_label(summary, targets)
        self._run(args, env=self._env(), what="terraform apply", label=f"terraform {command} {self.cfg.name}",
                  progress=terraform_view.ApplyProgress(summary, command=command))

    def import_resource(self, address: str, resource_id: str) -> None:
        """`terraform import ADDRESS ID`: adopt an existing object into the state."""
        self.init()
        self._run(["import", "-input=false", *self._color(), address, resource_id], env=self._env(),
                  what="terraform import", label=f"terraform import {address}")

    def state(self) -> dict[str, Any]:
        """The current state as JSON (`terraform state pull`); {} when there is none yet. The local backend's
        state is its file, read directly: what `state pull` prints, without a terraform run (~0.5 s of CPU;
        a sandbox deploy reads the state four times). Callers never run it beside a terraform that writes."""
        if self.cfg.state.backend == "local":
            try:
                text, what = self.local_state_path.read_text(), f"the state file {self.local_state_path}"
            except FileNotFoundError:
                return {}
        else:
            self.init()
            text, what = self._capture(["state", "pull"], env=self._env()).stdout, "terraform state pull"
        try:
            data = json.loads(text or "{}")
        except ValueError as exc:
            raise OpsError(f"{what} is not JSON ({exc})") from None
        return data if isinstance(data, dict) else {}

    def push_state(self, data: Mapping[str, Any]) -> None:
        """`terraform state push` of an edited state (its serial must be higher than the current one)."""
        self.init()
        folder = self.home / "plans"
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / "state-push.tfstate"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(data, fh)
            self._capture(["state", "push", str(path)], env=self._env())
        finally:
            path.unlink(missing_ok=True)

    def destroy(self, *, auto_approve: bool = False) -> None:
        """`terraform destroy`; the caller confirms first (terraform cannot prompt here)."""
        if not auto_approve:
            raise ValueError("destroy needs auto_approve=True: confirm with the user first")
        self.init()
        self._run(["destroy", "-input=false", "-auto-approve", *self._color()], env=self._env(),
                  what="terraform destroy", label=f"terraform destroy {self.cfg.name}",
                  progress=terraform_view.ApplyProgress(None, command="destroy"))

    def outputs(self) -> dict[str, Any]:
        """The stack outputs as plain values (`terraform output -json`, without the type wrappers). The local
        backend's are read from its state file, as state() reads it: the same values, without a terraform run
        (~0.5 s of CPU)."""
        if self.cfg.state.backend == "local":
            data = self.state().get("outputs") or {}
        else:
            self.init()
            proc = self._capture(["output", "-json", "-no-color"], env=self._env())
            try:
                data = json.loads(proc.stdout or "{}")
            except ValueError as exc:
                raise OpsError(f"terraform output -json printed something that is not JSON ({exc})") from None
        if not isinstance(data, dict):
            return {}
        return {str(name): item.get("value") for name, item in data.items() if isinstance(item, dict)}

    # ---- environment and init bookkeeping ----------------------------------------------------

    def _env(self, *, backend: bool = True, reattach: bool = True) -> dict[str, str]:
        if self._prepared_env is None:
            self._prepared_env = self._prepare()
        env = dict(self._prepared_env)
        env["TF_DATA_DIR"] = str(self.data_dir(backend=backend))
        # Only runs that talk to AWS need the emulator; `validate` (no backend) works with it down.
        providers = required_providers(self.workdir)
        if backend and self.cfg.sandbox and AWS_PROVIDER in providers:
            apply_sandbox_env(env, self.cfg)
            # Not for init: it would leave a provider it did not install out of the lock file.
            value = provider_server(env, version=providers[AWS_PROVIDER]) if reattach else None
            if value is not None:
                env[REATTACH_ENV] = value
        return env

    def _prepare(self) -> dict[str, str]:
        """Check the tools once, write the CLI config if a mirror is in use, build the child env."""
        binary = terraform_binary()
        terraform_version(binary)
        env = child_env(os.environ, self.extra_env)
        self.home.mkdir(parents=True, exist_ok=True)
        mirror = provider_mirror(self.cfg)
        if mirror is not None:
            providers = required_providers(self.workdir)
            check_mirror(mirror, providers, platform=terraform_platform(binary), cfg=self.cfg)
            _write_if_changed(self.cli_config_path, cli_config(mirror, providers))
            env["TF_CLI_CONFIG_FILE"] = str(self.cli_config_path)
        env[facts.TERRAFORM_ENV] = binary
        return env

    def _init_key(self, args: Sequence[str], env: Mapping[str, str]) -> str:
        h = hashlib.sha256()
        # Colour depends on the terminal, not on what init sets up.
        h.update(json.dumps([a for a in args if a != "-no-color"]).encode())
        h.update(terraform_version(env[facts.TERRAFORM_ENV]).encode())
        cli = env.get("TF_CLI_CONFIG_FILE")
        if cli and Path(cli).is_file():
            h.update(Path(cli).read_bytes())
        try:
            block = json.loads((self.workdir / _SYNTH_FILE).read_text()).get("terraform", {})
        except (FileNotFoundError, ValueError):
            block = {}
        # Only the terraform block matters to init: required providers and the backend.
        h.update(json.dumps(block, sort_keys=True).encode())
        return h.hexdigest()

    def _stamp_path(self, backend: bool) -> Path:
        return self.data_dir(backend=backend) / INIT_STAMP

    def _init_current(self, key: str, *, backend: bool) -> bool:
        if not self.data_dir(backend=backend).is_dir():
            return False
        # The lock file lives next to cdk.tf.json: deleting cdktf.out must bring init back. A
        # configuration without providers (only built-ins) gets no lock file.
        if required_providers(self.workdir) and not (self.workdir / ".terraform.lock.hcl").is_file():
            return False
        try:
            stamp = json.loads(self._stamp_path(backend).read_text())
        except (FileNotFoundError, ValueError):
            return False
        return isinstance(stamp, dict) and stamp.get("key") == key

    def _color(self) -> list[str]:
        # Quiet runs read terraform's output and log it: plain text, whatever the terminal.
        return [] if self.verbose and _tty() else ["-no-color"]

    # ---- running terraform -------------------------------------------------------------------

    def _argv(self, args: Sequence[str], env: Mapping[str, str]) -> list[str]:
        return [env[facts.TERRAFORM_ENV], *args]

    def _run(self, args: Sequence[str], *, env: Mapping[str, str], what: str, ok: Sequence[int] = (0,),
             stdout: TextIO | None = None, label: str = "",
             progress: terraform_view.ApplyProgress | None = None) -> tuple[int, list[str]]:
        """Run terraform; returns its exit code and (quiet runs) its output lines."""
        if not self.workdir.joinpath(_SYNTH_FILE).is_file() and not any(self.workdir.glob("*.tf*")):
            raise OpsError(f"{self.workdir} has no Terraform configuration",
                           next_step=f"invoke synth --env {self.cfg.name}")
        argv = self._argv(args, env)
        if self.verbose:
            code = run_streaming(argv, cwd=self.workdir, env=env, stdout=stdout)
            if code not in ok:
                raise CommandFailedError(f"{what} failed for {self.cfg.name} (exit code {code}); its output is "
                                         "above", returncode=code)
            return code, []
        code, lines = terraform_view.run_quiet(argv, cwd=self.workdir, env=env, log=self.log, out=self.out,
                                               label=label or what, progress=progress, env_name=self.cfg.name)
        if code not in ok:
            terraform_view.print_error(self.out, lines)
            raise CommandFailedError(f"{what} failed for {self.cfg.name} (exit code {code}); terraform's error is "
                                     f"above, its whole output in {self.log.path}", returncode=code)
        return code, lines

    def _capture(self, args: Sequence[str], *, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self._argv(args, env), cwd=self.workdir, env=dict(env), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, check=False)
        if proc.returncode != 0:
            detail = _first_error(proc.stderr) or f"exit code {proc.returncode}"
            raise CommandFailedError(f"terraform {args[0]} failed for {self.cfg.name}: {detail}",
                                     returncode=proc.returncode)
        return proc


def _apply_label(summary: PlanSummary | None, targets: Sequence[str]) -> str:
    if targets:
        return "targeted apply"
    if summary is not None and summary.changes and all(c.action == "destroy" for c in summary.changes):
        return "destroy"
    return "apply"


def run_streaming(argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], stdout: TextIO | None = None) -> int:
    """Run a command with inherited stdout/stderr; forward Ctrl-C and wait for it to exit.

    Returns the exit code. After an interrupt, raises CommandFailedError(returncode=130) once the
    child has exited, so the caller never leaves it running with a lock held.
    """
    try:
        proc = subprocess.Popen(list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL,
                                stdout=_fileno(stdout), process_group=0)
    except FileNotFoundError:
        raise ToolMissingError(f"{argv[0]} was not found; {INSTALL_HINT}") from None
    interrupts = 0
    while True:
        try:
            code = proc.wait()
            break
        except KeyboardInterrupt:
            interrupts += 1
            if proc.poll() is None:
                if interrupts == 1:
                    sys.stderr.write("\ninterrupt: asking terraform to stop cleanly (it releases its state lock); "
                                     "press Ctrl-C again to abort it hard\n")
                # The whole group, as a terminal would: terraform and its provider plugins.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)
    if interrupts:
        raise CommandFailedError(f"interrupted; {Path(argv[0]).name} {argv[1] if len(argv) > 1 else ''} "
                                 f"stopped (exit code {code})", returncode=130)
    return code


def apply_sandbox_env(env: dict[str, str], cfg: EnvConfig) -> None:
    """Point terraform's AWS provider at the sandbox's emulator, with its fake keys: for sandbox envs only.

    The synthesized JSON has no endpoints and no keys (the same constructs as prod); they exist only
    in the child's environment. Anything in the user's shell that could reach real AWS (profiles,
    session tokens, config files, per-service endpoint overrides) is removed from it.
    """
    if not cfg.sandbox:
        raise ValueError(f"{cfg.name} is not a sandbox environment; refusing to point terraform at an emulator")
    endpoints = aws.sandbox_endpoints()
    for var in [k for k in env if k.startswith("AWS_ENDPOINT_URL_")]:
        del env[var]
    # AWS_CA_BUNDLE: the emulator speaks plain HTTP on loopback; and a provider configured a second time
    # with one fails ("unable to add custom RootCAs HTTPClient"), which the sandbox's provider server is.
    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ROLE_ARN",
                "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CA_BUNDLE"):
        env.pop(var, None)
    # Terraform runs as the sandbox's deployer identity: IAM is enforced there as on AWS.
    deployer = aws.sandbox_credentials(cfg, "deployer")
    env.update({
        "AWS_ENDPOINT_URL": endpoints["default"],
        "AWS_ACCESS_KEY_ID": deployer["aws_access_key_id"],
        "AWS_SECRET_ACCESS_KEY": deployer["aws_secret_access_key"],
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    })


def sandbox_provider_env(cfg: EnvConfig) -> dict[str, str]:
    """The environment a sandbox run's terraform gives the AWS provider it starts (a provider server's)."""
    env = child_env(os.environ, {})
    apply_sandbox_env(env, cfg)
    return env


def provider_fingerprint(env: Mapping[str, str]) -> str:
    """A digest of what the AWS provider reads from its environment: credentials, endpoints, proxies, logging."""
    picked = sorted((k, v) for k, v in env.items()
                    if k.upper().startswith("AWS_") or k.startswith("TF_LOG") or k.upper() in _PROVIDER_ENV_NAMES)
    return hashlib.sha256(json.dumps(picked).encode()).hexdigest()


def provider_server(env: Mapping[str, str], *, version: str) -> str | None:
    """TF_REATTACH_PROVIDERS for the sandbox's AWS provider server (ops/sandbox/provider_server.py), or None.

    Only a server that answers on its socket, serves the version the stack pins and was started with the
    environment this run would give its own provider (provider_fingerprint): anything else, and terraform
    starts the provider itself as usual. With it, terraform neither starts a provider process nor checks the
    binary against the lock file (internal/command/meta_providers.go, unmanagedProviderFactory): ~1 s of
    CPU less per command that loads the provider.
    """
    data = read_json(aws.state_dir() / facts.PROVIDER_SERVER_FILE)
    if not data or data.get("fingerprint") != provider_fingerprint(env):
        return None
    if str(data.get("version")) != version.lstrip("= ").strip():
        return None
    return json.dumps(data["reattach"]) if server_answers(data) else None


def server_answers(record: Mapping[str, Any]) -> bool:
    """The provider server a PROVIDER_SERVER_FILE record names accepts connections on its Unix socket."""
    try:
        addr = record["reattach"][AWS_PROVIDER]["Addr"]
        network, path = str(addr["Network"]), str(addr["String"])
    except (KeyError, TypeError):
        return False
    if network != "unix":
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        try:
            sock.connect(path)
        except OSError:
            return False
    return True


def installed_provider(cfg: EnvConfig, *, version: str = DEFAULT_AWS_PROVIDER_VERSION) -> Path | None:
    """The AWS provider's executable as `init` installed it for this env (checked against the lock file
    then), else as an unpacked provider mirror holds it; None when neither has it yet."""
    platform = terraform_platform()
    places = [env_home(cfg) / _DATA_DIR / "providers" / AWS_PROVIDER / version / platform]
    mirror = provider_mirror(cfg)
    if mirror is not None:
        places.append(mirror / AWS_PROVIDER / version / platform)
    for place in places:
        found = sorted(place.glob("terraform-provider-aws_v*")) if place.is_dir() else []
        if found and os.access(found[0], os.X_OK):
            return found[0].resolve()
    return None


def _fileno(stream: TextIO | None) -> int | None:
    """The stream's descriptor for a child to inherit; None (our stdout) when it has none (captured)."""
    if stream is None:
        return None
    try:
        stream.flush()
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None


# ---- tools, mirror, CLI config --------------------------------------------------------------


def terraform_binary() -> str:
    found = shutil.which("terraform")
    if found is None:
        raise ToolMissingError(f"terraform is not on PATH; {INSTALL_HINT}")
    return found


@functools.lru_cache(maxsize=8)
def _version_info(binary: str) -> tuple[str, str]:
    try:
        proc = subprocess.run([binary, "version", "-json"], capture_output=True, text=True, check=False,
                              stdin=subprocess.DEVNULL, env={**os.environ, "CHECKPOINT_DISABLE": "1"}, timeout=60)
    except (FileNotFoundError, PermissionError):
        raise ToolMissingError(f"{binary} cannot be run; {INSTALL_HINT}") from None
    try:
        data = json.loads(proc.stdout)
        return str(data["terraform_version"]), str(data.get("platform", ""))
    except (ValueError, KeyError, TypeError):
        # Versions before 0.13 have no -json; they are too old anyway.
        match = re.search(r"Terraform v(\S+)", proc.stdout)
        return (match.group(1) if match else "unknown"), ""


def terraform_version(binary: str | None = None) -> str:
    """The terraform version; ToolMissingError when terraform is missing or older than MIN_TERRAFORM."""
    binary = binary or terraform_binary()
    version, _ = _version_info(binary)
    match = _VERSION_RE.match(version)
    if match is None or (int(match.group(1)), int(match.group(2))) < MIN_TERRAFORM:
        raise ToolMissingError(f"terraform {version} at {binary} is too old; {INSTALL_HINT}")
    return version


def terraform_platform(binary: str | None = None) -> str:
    _, platform = _version_info(binary or terraform_binary())
    return platform


def provider_mirror(cfg: EnvConfig) -> Path | None:
    """The provider mirror directory: the env's [terraform] provider_mirror, else the environment
    variable, else the first usual place holding the AWS provider (discovered_mirror)."""
    chosen = cfg.terraform.provider_mirror or os.environ.get(MIRROR_ENV, "")
    if chosen == "none":
        # An explicit "use the registry", even where a mirror sits at a usual place.
        return None
    if not chosen:
        return discovered_mirror()
    path = Path(chosen).expanduser()
    return path if path.is_absolute() else cfg.source.parent.parent / path


def discovered_mirror(places: Sequence[str] | None = None) -> Path | None:
    """A provider mirror at a usual place (one holding registry.terraform.io/hashicorp/aws), or None."""
    for place in MIRROR_PLACES if places is None else places:
        path = Path(place).expanduser()
        if (path / AWS_PROVIDER).is_dir():
            return path
    return None


def required_providers(workdir: Path) -> dict[str, str]:
    """Provider address -> version constraint from the synthesized JSON (source `aws` is hashicorp/aws)."""
    try:
        block = json.loads((workdir / _SYNTH_FILE).read_text()).get("terraform", {})
    except (FileNotFoundError, ValueError):
        # Not synthesized by us (hand-written *.tf): assume what our stacks need.
        return {"registry.terraform.io/hashicorp/aws": DEFAULT_AWS_PROVIDER_VERSION}
    found: dict[str, str] = {}
    for name, spec in (block.get("required_providers") or {}).items():
        spec = spec if isinstance(spec, dict) else {"version": str(spec)}
        found[_provider_address(str(spec.get("source") or name))] = str(spec.get("version", ""))
    return found


def _provider_address(source: str) -> str:
    parts = source.lower().split("/")
    if len(parts) == 1:
        return f"registry.terraform.io/hashicorp/{parts[0]}"
    if len(parts) == 2:
        return f"registry.terraform.io/{parts[0]}/{parts[1]}"
    return "/".join(parts)


def check_mirror(mirror: Path, providers: Mapping[str, str], *, platform: str, cfg: EnvConfig) -> None:
    """ToolMissingError naming the fix when the mirror lacks a provider version this stack needs."""
    if cfg.terraform.provider_mirror:
        origin = "[terraform] provider_mirror in " + cfg.source.name
    elif os.environ.get(MIRROR_ENV):
        origin = MIRROR_ENV
    else:
        origin = f"found at a usual place; set {MIRROR_ENV} to choose another"
    if not mirror.is_dir():
        raise ToolMissingError(
            f"the provider mirror {mirror} (from {origin}) does not exist; create it with "
            f"`terraform providers mirror {mirror}` on a connected machine, or unset {origin} to use the registry")
    for address, version in providers.items():
        exact = version.lstrip("= ").strip()
        base = mirror / address
        if _mirror_has(base, exact, platform):
            continue
        name = address.rsplit("/", 1)[-1]
        have = sorted(p.name for p in base.iterdir() if p.is_dir() or p.suffix == ".zip") if base.is_dir() else []
        need = f"{address} {exact or '(any version)'} for {platform or 'this platform'}"
        raise ToolMissingError(
            f"the provider mirror {mirror} (from {origin}) has no {need}"
            + (f" (it has: {', '.join(have)})" if have else "")
            + f"; add it with `terraform providers mirror -platform={platform or 'linux_amd64'} {mirror}` run in "
            f"a synthesized stack directory on a connected machine (needs terraform-provider-{name} {exact})")


def _mirror_has(base: Path, version: str, platform: str) -> bool:
    if not base.is_dir():
        return False
    if not version or not re.fullmatch(r"[\w.+-]+", version):
        # A range rather than a pin: any version present may satisfy it; terraform decides.
        return any(base.iterdir())
    unpacked = base / version / platform if platform else base / version
    if unpacked.is_dir() and any(unpacked.iterdir()):
        return True
    name = base.name
    return any(base.glob(f"terraform-provider-{name}_{version}_{platform or '*'}.zip"))


def cli_config(mirror: Path, providers: Mapping[str, str]) -> str:
    """A terraform CLI config that installs these providers from the mirror and everything else directly."""
    addresses = ", ".join(json.dumps(a) for a in sorted(providers)) or '"registry.terraform.io/hashicorp/aws"'
    return (
        "# Generated by bastionless (ops/terraform.py): providers from the mirror, nothing else changed.\n"
        "provider_installation {\n"
        "  filesystem_mirror {\n"
        f"    path    = {json.dumps(str(mirror))}\n"
        f"    include = [{addresses}]\n"
        "  }\n"
        "  direct {\n"
        f"    exclude = [{addresses}]\n"
        "  }\n"
        "}\n"
    )


def _write_if_changed(path: Path, text: str) -> None:
    if path.is_file() and path.read_text() == text:
        return
    atomic_write(path, text)


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        text = line.strip(" │╷╵\t")
        if text.startswith("Error:"):
            return text
    return next((ln.strip() for ln in stderr.splitlines() if ln.strip()), "")


def _tty() -> bool:
    return sys.stdout.isatty()


def for_env(cfg: EnvConfig, *, extra_env: Mapping[str, str] | None = None, force_synth: bool = False,
            verbose: bool = False, out: TextIO | None = None) -> Terraform:
    """Synthesize the environment (cached) and return its Terraform runner: the usual first step of a task."""
    from ops.synth import synth

    terraform_version()
    return Terraform(cfg, synth(cfg, force=force_synth), extra_env, verbose=verbose, out=out)


def validate_envs(cfgs: Sequence[EnvConfig], *, force_synth: bool = False, verbose: bool = False) -> None:
    """Synthesize (cached) and `terraform validate` each environment, offline-capable via the mirror."""
    from ops.synth import synth_many

    # Fail on a missing tool before spending a synth on it.
    terraform_version()
    for cfg in cfgs:
        mirror = provider_mirror(cfg)
        if mirror is not None and not mirror.is_dir():
            check_mirror(mirror, {}, platform="", cfg=cfg)
    workdirs = synth_many(cfgs, force=force_synth)
    for cfg in cfgs:
        if verbose:
            sys.stderr.write(f"validating {cfg.name}...\n")
            sys.stderr.flush()
        Terraform(cfg, workdirs[cfg.name], verbose=verbose).validate()
