"""plan / deploy / destroy / outputs for an environment: account guard, confirmation, terraform.

Order of every changing command: check the caller's AWS account against the env (nothing runs
before that passes), synthesize (cached), `terraform plan` into a saved plan that is shown, ask,
then apply exactly that saved plan, so what was confirmed is what runs. The plan is shown as a short
table and the apply as progress (ops.terraform_view; terraform's own output goes to a log file, or
to the screen with `verbose`); Ctrl-C reaches terraform through ops.terraform, which waits for it
to release its state lock.

This module knows nothing about the sandbox: `ops.sandbox.manager.deploy` wraps `deploy` with Hooks
(adopt the emulated RDS instance before the plan, wire it to the local PostgreSQL after apply).
"""

from __future__ import annotations

import contextlib
import json
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


@dataclass(frozen=True)
class Hooks:
    """What a wrapper adds around apply and destroy (the sandbox: ops.sandbox.manager.deploy/destroy).

    `adopt`: bring resources that already exist into the state before the plan; True when it did.
    `before_destroy`: runs once the destroy is confirmed, just before terraform applies the destroy plan.
    """

    adopt: Callable[[EnvConfig, terraform.Terraform, TextIO], bool] | None = None
    before_destroy: Callable[[EnvConfig, terraform.Terraform, TextIO], None] | None = None
    after_apply: Callable[[EnvConfig, TextIO], None] | None = None
    after_destroy: Callable[[EnvConfig], None] | None = None


NO_HOOKS = Hooks()


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
         out: TextIO = sys.stderr, verbose: bool = False) -> int:
    """Account check, synth, `terraform plan`. Returns terraform's exit code (2 = changes with detailed_exitcode)."""
    preflight(cfg)
    guard(cfg, out=out)
    tf = terraform.for_env(cfg, verbose=verbose, out=out)
    code = tf.plan(detailed_exitcode=detailed_exitcode, destroy=destroy)
    if tf.last_plan is not None and not tf.last_plan.changes:
        say(out, f"{cfg.name}: no changes; the infrastructure matches the configuration")
    return code


@aws.runs_as("deployer")
def deploy(cfg: EnvConfig, *, yes: bool = False, ask: Ask = ask_terminal, out: TextIO = sys.stderr,
           hooks: Hooks = NO_HOOKS, verbose: bool = False) -> DeployResult:
    """Plan, show, confirm (unless `yes`), apply the saved plan, then `hooks.after_apply`."""
    preflight(cfg)
    ident = guard(cfg, out=out)
    tf = terraform.for_env(cfg, verbose=verbose, out=out)
    plan_path = _plan_file(tf, "deploy.tfplan")
    try:
        # Already confirmed: adopt first, so the one plan shown is the one applied.
        adopted = hooks.adopt(cfg, tf, out) if hooks.adopt and yes else False
        # After an adoption (sandbox) the state was just written: its targeted apply refreshed or created
        # everything that does not need the database and its imports read the rest; reading every object
        # back once more finds nothing new (~1.5 s of CPU for the sandbox's ~70 objects).
        code = tf.plan(detailed_exitcode=True, out=plan_path, refresh=not adopted)
        if code == 2:
            if not yes:
                confirm(cfg, action="Apply these changes to", account=ident["Account"], ask=ask, what="deploy")
            if hooks.adopt and not yes and hooks.adopt(cfg, tf, out):
                # The state changed under the saved plan: apply the same configuration afresh.
                tf.apply(auto_approve=True)
            else:
                tf.apply(plan_file=plan_path)
        else:
            say(out, f"{cfg.name}: no changes; the infrastructure matches the configuration")
    finally:
        plan_path.unlink(missing_ok=True)
    if hooks.after_apply:
        hooks.after_apply(cfg, out)
    return DeployResult(env=cfg.name, account=ident["Account"], changed=code == 2 or adopted)


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
            out: TextIO = sys.stderr, hooks: Hooks = NO_HOOKS, verbose: bool = False) -> None:
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
    tf = terraform.for_env(cfg, verbose=verbose, out=out)
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
        if hooks.before_destroy:
            hooks.before_destroy(cfg, tf, out)
        tf.apply(plan_file=plan_path)
    finally:
        plan_path.unlink(missing_ok=True)
    if hooks.after_destroy:
        hooks.after_destroy(cfg)


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

