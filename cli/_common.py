"""The one place where `ops` exceptions become `invoke.Exit` messages."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from invoke.exceptions import Exit
from invoke.tasks import Task

from ops.config import EnvConfig, load_env
from ops.errors import AbortedError, CommandFailedError, OpsError

ENV_HELP = "environment name: a file envs/<name>.toml (e.g. sandbox, staging, prod)"
YES_HELP = "do not ask for confirmation (for automation); the AWS account is still checked"
VERBOSE_HELP = "show terraform's own output as it runs (by default it goes to a log file; the screen shows a summary)"


class EnvFlagTask(Task):  # type: ignore[type-arg]
    """A task without automatic short flags (so `-h` stays help) that still takes `-e` for `--env`."""

    def arg_opts(self, name: str, default: str, taken_names: set[str]) -> dict[str, object]:
        opts: dict[str, object] = super().arg_opts(name, default, taken_names)
        names = opts["names"]
        if name == "env" and isinstance(names, list) and "e" not in taken_names and "e" not in names:
            names.append("e")
        return opts


def local_port_help(lead: str) -> str:
    """`lead` plus each environment's real [tunnel] local_port, read when the help is built."""
    from ops.config import available_envs
    from ops.errors import OpsError

    ports = []
    for name in available_envs():
        try:
            ports.append(f"{name} {load_env(name).tunnel.local_port}")
        except OpsError:
            continue
    return f"{lead} (default: the env's [tunnel] local_port: {', '.join(ports) or 'see envs/*.toml'})"


@contextmanager
def ops_errors() -> Iterator[None]:
    """Turn an OpsError into one clear line and a non-zero exit; Ctrl-C into exit 130."""
    try:
        yield
    except CommandFailedError as exc:
        raise Exit(_line(exc), code=exc.returncode or 1) from None
    except AbortedError as exc:
        raise Exit(_line(exc), code=1) from None
    except OpsError as exc:
        raise Exit(_line(exc), code=1) from None
    except KeyboardInterrupt:
        raise Exit("interrupted", code=130) from None


def env(name: str) -> EnvConfig:
    """Load an environment, raising the config error as a clean exit (for use inside ops_errors)."""
    if not name:
        raise OpsError("no environment given; pass --env NAME", next_step="invoke --help <task>")
    return load_env(name)


def _line(exc: OpsError) -> str:
    msg = f"error: {exc.message}"
    return f"{msg}; next: {exc.next_step}" if exc.next_step else msg
