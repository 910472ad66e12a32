"""Infrastructure tasks: synthesize, validate and price the stacks."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, VERBOSE_HELP, ops_errors
from ops.config import EnvConfig, available_envs, load_env
from ops.errors import OpsError

ALL_HELP = "every environment in envs/ (synthesized together, in one process)"


def _selected(name: str, every: bool) -> list[EnvConfig]:
    if every and name:
        raise OpsError("pass either --env NAME or --all, not both")
    if every:
        return [load_env(n) for n in available_envs()]
    return [_common.env(name)]


@task(help={"env": ENV_HELP, "all": ALL_HELP, "force": "synthesize even when nothing changed since the last run"})
def synth(c: Context, env: str = "", all: bool = False, force: bool = False) -> None:
    """Synthesize Terraform JSON into cdktf.out/ (skipped when nothing changed)."""
    from ops.synth import SYNTH_FILE, synth_many

    with ops_errors():
        for name, path in synth_many(_selected(env, all), force=force).items():
            print(f"{name}: {path / SYNTH_FILE}")


@task(help={"env": ENV_HELP, "all": ALL_HELP, "force": "re-synthesize even when nothing changed",
            "verbose": VERBOSE_HELP})
def validate(c: Context, env: str = "", all: bool = False, force: bool = False, verbose: bool = False) -> None:
    """Synthesize, then terraform init -backend=false and terraform validate."""
    from ops.terraform import validate_envs

    with ops_errors():
        validate_envs(_selected(env, all), force_synth=force, verbose=verbose)
        print("valid")


@task(help={"env": ENV_HELP, "json": "print the estimate as JSON instead of a table"})
def cost(c: Context, env: str = "", json: bool = False) -> None:
    """Estimate an environment's monthly AWS cost: egress (NAT or endpoints), relay, RDS, keys, logs."""
    from ops.cost import estimate, format_table

    with ops_errors():
        est = estimate(_common.env(env))
        print(est.to_json() if json else format_table(est))
