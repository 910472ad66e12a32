"""Deploy lifecycle: plan, deploy, destroy, outputs (the AWS account is checked before any change).

The ops modules are imported inside each task: `invoke` loads every task module, and every command
(and each test's CLI child) would otherwise pay for terraform's and the sandbox manager's imports.
"""

from __future__ import annotations

from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, VERBOSE_HELP, YES_HELP, ops_errors


@task(help={"env": ENV_HELP, "verbose": VERBOSE_HELP,
            "detailed_exitcode": "exit 2 when there are changes, 0 when none (terraform's -detailed-exitcode)"})
def plan(c: Context, env: str = "", detailed_exitcode: bool = False, verbose: bool = False) -> None:
    """Check the AWS account, synthesize, then terraform plan."""
    from ops import deploy as ops_deploy

    with ops_errors():
        code = ops_deploy.plan(_common.env(env), detailed_exitcode=detailed_exitcode, verbose=verbose)
    if code:
        raise Exit(code=code)


@task(help={"env": ENV_HELP, "yes": YES_HELP, "verbose": VERBOSE_HELP})
def deploy(c: Context, env: str = "", yes: bool = False, verbose: bool = False) -> None:
    """Check the account, show the plan, confirm (prod: type the env name), apply it."""
    from ops import deploy as ops_deploy
    from ops.sandbox import manager as sandbox

    with ops_errors():
        cfg = _common.env(env)
        # The sandbox wraps deploy (its database shortcut and wiring); ops.deploy knows nothing of it.
        (sandbox.deploy if cfg.sandbox else ops_deploy.deploy)(cfg, yes=yes, verbose=verbose)


@task(help={"env": ENV_HELP, "yes": YES_HELP, "verbose": VERBOSE_HELP,
            "force_deletion_protection": "destroy even a database with deletion protection (you will also be asked "
                                        "to type its identifier; --yes does not skip that)"})
def destroy(c: Context, env: str = "", yes: bool = False, force_deletion_protection: bool = False,
            verbose: bool = False) -> None:
    """Destroy the environment's stack; refuses while the database has deletion protection."""
    from ops import deploy as ops_deploy
    from ops.sandbox import manager as sandbox

    with ops_errors():
        cfg = _common.env(env)
        (sandbox.destroy if cfg.sandbox else ops_deploy.destroy)(
            cfg, yes=yes, force_deletion_protection=force_deletion_protection, verbose=verbose)


@task(help={"env": ENV_HELP, "json": "print the outputs as a JSON object"})
def outputs(c: Context, env: str = "", json: bool = False) -> None:
    """Print the stack outputs (relay id, database address, secret ARN, ...)."""
    from ops import deploy as ops_deploy

    with ops_errors():
        print(ops_deploy.format_outputs(ops_deploy.outputs(_common.env(env)), as_json=json))
