"""plan / deploy / destroy / outputs for an environment: account guard, confirmation, terraform.

Order of every changing command: check the caller's AWS account against the env (nothing runs
before that passes), synthesize (cached), `terraform plan` into a saved plan that is shown, ask,
then apply exactly that saved plan, so what was confirmed is what runs. Terraform streams its own
output; Ctrl-C reaches it through ops.terraform, which waits for it to release its state lock.

For a sandbox env the AWS account is the emulator's and, after apply, `ops.sandbox.manager.after_apply`
wires the emulated RDS to the local PostgreSQL (credentials from Secrets Manager, as in prod).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ops import aws, terraform
from ops import confirm as confirm_mod
from ops.config import EnvConfig, overlapping_envs
from ops.console import say
from ops.errors import AbortedError, GuardrailError

Ask = Callable[[str], str]
RDS_SHORTCUT_ENV = "BASTIONLESS_SANDBOX_RDS_SHORTCUT"


@dataclass(frozen=True)
class DeployResult:
    env: str
    account: str
    changed: bool


# One confirmation mechanism for every changing task (ops.confirm); these names stay for the callers.
ask_terminal = confirm_mod.terminal_answer


def guard(cfg: EnvConfig, *, out: TextIO = sys.stderr) -> dict[str, str]:
    """The account check every plan/apply/destroy starts with."""
    ident = aws.check_account(cfg)
    say(out, f"AWS account {ident['Account']} ({ident['Arn']}) matches {cfg.source.name}")
    for warning in overlapping_envs(cfg):
        say(out, f"warning: {warning}")
    return ident


def confirm(cfg: EnvConfig, *, action: str, account: str, ask: Ask, what: str) -> None:
    """prod: type the environment name; elsewhere y/N (ops.confirm.confirm)."""
    confirm_mod.confirm(cfg, action=action, account=account, what=what, ask=ask)


def _plan_file(tf: terraform.Terraform, name: str) -> Path:
    # Saved plans can hold sensitive values: keep them private, next to terraform's data dir.
    folder = tf.home / "plans"
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    folder.chmod(0o700)
    return folder / name


@aws.runs_as("deployer")
def plan(cfg: EnvConfig, *, detailed_exitcode: bool = False, destroy: bool = False,
         out: TextIO = sys.stderr) -> int:
    """Account check, synth, `terraform plan`. Returns terraform's exit code (2 = changes with detailed_exitcode)."""
    preflight(cfg)
    guard(cfg, out=out)
    tf = terraform.for_env(cfg)
    return tf.plan(detailed_exitcode=detailed_exitcode, destroy=destroy)


@aws.runs_as("deployer")
def deploy(cfg: EnvConfig, *, yes: bool = False, ask: Ask = ask_terminal, out: TextIO = sys.stderr,
           fast_sandbox_rds: bool | None = None) -> DeployResult:
    """Plan, show, confirm (unless `yes`), apply the saved plan; for the sandbox, wire up the database.

    `fast_sandbox_rds` (sandbox only): create the RDS instance through the emulator's API and import
    it instead of waiting out the provider's fixed waiter (ops/sandbox/fast_rds.py). Default: on,
    unless the environment sets BASTIONLESS_SANDBOX_RDS_SHORTCUT=0 (to measure it, or to rule it out).
    """
    preflight(cfg)
    ident = guard(cfg, out=out)
    tf = terraform.for_env(cfg)
    if fast_sandbox_rds is None:
        fast_sandbox_rds = os.environ.get(RDS_SHORTCUT_ENV, "1") != "0"
    fast = cfg.sandbox and fast_sandbox_rds
    plan_path = _plan_file(tf, "deploy.tfplan")
    try:
        # Already confirmed: adopt first, so the one plan shown is the one applied.
        adopted = _adopt_database(cfg, tf, out=out) if fast and yes else False
        code = tf.plan(detailed_exitcode=True, out=plan_path)
        if code == 2:
            if not yes:
                confirm(cfg, action="Apply these changes to", account=ident["Account"], ask=ask, what="deploy")
            if fast and not yes and _adopt_database(cfg, tf, out=out):
                # The state changed under the saved plan: apply the same configuration afresh.
                tf.apply(auto_approve=True)
            else:
                tf.apply(plan_file=plan_path)
        else:
            say(out, f"{cfg.name}: no changes; the infrastructure matches the configuration")
    finally:
        plan_path.unlink(missing_ok=True)
    if cfg.sandbox:
        from ops.sandbox import manager

        manager.after_apply(cfg, out=out)
    return DeployResult(env=cfg.name, account=ident["Account"], changed=code == 2 or adopted)


def _adopt_database(cfg: EnvConfig, tf: terraform.Terraform, *, out: TextIO) -> bool:
    from ops.sandbox import fast_rds
    from ops.synth import SYNTH_FILE

    config = json.loads((tf.workdir / SYNTH_FILE).read_text())
    return fast_rds.adopt_database(cfg, tf, config=config, out=out)


def preflight(cfg: EnvConfig) -> None:
    """Local tools first (terraform, the provider mirror): fail before touching AWS or synthesizing."""
    terraform.terraform_version()
    mirror = terraform.provider_mirror(cfg)
    if mirror is not None and not mirror.is_dir():
        terraform.check_mirror(mirror, {}, platform="", cfg=cfg)


def database_protection(cfg: EnvConfig) -> tuple[str, bool] | None:
    """(identifier, deletion protection) of the env's RDS instance, or None if it does not exist."""
    rds = aws.client(cfg, "rds")
    try:
        found = rds.describe_db_instances(DBInstanceIdentifier=cfg.stack_name)["DBInstances"]
    except rds.exceptions.DBInstanceNotFoundFault:
        return None
    if not found:
        return None
    return str(found[0]["DBInstanceIdentifier"]), bool(found[0].get("DeletionProtection"))


@aws.runs_as("deployer")
def destroy(cfg: EnvConfig, *, yes: bool = False, force_deletion_protection: bool = False, ask: Ask = ask_terminal,
            out: TextIO = sys.stderr) -> None:
    """Destroy the environment. Refuses while the database has deletion protection, unless
    `force_deletion_protection` AND the user types the database identifier (even with `yes`)."""
    preflight(cfg)
    ident = guard(cfg, out=out)
    protected = database_protection(cfg)
    if protected is not None and protected[1] and not force_deletion_protection:
        raise GuardrailError(
            f"the database {protected[0]} has deletion protection on, so {cfg.name} is not destroyed; nothing "
            "was changed",
            next_step=f"if you really mean to delete it: invoke destroy --env {cfg.name} --force-deletion-protection")
    tf = terraform.for_env(cfg)
    plan_path = _plan_file(tf, "destroy.tfplan")
    try:
        code = tf.plan(detailed_exitcode=True, destroy=True, out=plan_path)
        if code == 0:
            say(out, f"{cfg.name}: nothing to destroy")
            return
        if not yes:
            confirm(cfg, action="DESTROY everything listed above in", account=ident["Account"], ask=ask,
                    what="destroy")
        if protected is not None and protected[1]:
            answer = ask(f"\nThe database {protected[0]} has deletion protection. Type its identifier "
                         f"({protected[0]}) to turn protection off and delete it: ")
            if answer != protected[0]:
                raise AbortedError(f"destroy of {cfg.name} cancelled; nothing was changed")
            aws.client(cfg, "rds").modify_db_instance(DBInstanceIdentifier=protected[0], DeletionProtection=False,
                                                      ApplyImmediately=True)
            say(out, f"deletion protection of {protected[0]} turned off")
        tf.apply(plan_file=plan_path)
    finally:
        plan_path.unlink(missing_ok=True)
    if cfg.sandbox:
        from ops.sandbox import manager

        manager.after_destroy(cfg)


def outputs(cfg: EnvConfig) -> dict[str, Any]:
    """The stack outputs (reads terraform state; changes nothing, so no account check)."""
    return terraform.for_env(cfg).outputs()


def format_outputs(values: dict[str, Any], *, as_json: bool = False) -> str:
    if as_json:
        return json.dumps(values, indent=2, sort_keys=True)
    if not values:
        return "(no outputs: the stack is not deployed)"
    width = max(len(k) for k in values)
    lines = []
    for key in sorted(values):
        value = values[key]
        text = value if isinstance(value, str) else json.dumps(value)
        if key == "developer_policy_json" and isinstance(value, str):
            with contextlib.suppress(ValueError):
                text = json.dumps(json.loads(value), separators=(",", ":"))
        lines.append(f"{key:<{width}}  {text}")
    return "\n".join(lines)

