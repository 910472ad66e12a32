"""Tunnels: localhost -> Session Manager -> relay -> RDS; list and close the running ones."""

from __future__ import annotations

from invoke.context import Context
from invoke.tasks import task

from cli import _common
from cli._common import ENV_HELP, EnvFlagTask, local_port_help, ops_errors


# No automatic short flags: `-h` must stay help, not --host; `-e` is added for --env.
@task(name="tunnel", auto_shortflags=False, klass=EnvFlagTask, help={
    "env": ENV_HELP,
    "local_port": local_port_help("local port to listen on; 0 = any free port"),
    "reason": "why you open the tunnel; sent as the StartSession reason (session history, CloudTrail)",
    "background": "detach and keep running; list with `invoke tunnels`, stop with `invoke tunnel-close`",
    "transport": "auto (session-manager-plugin if installed, else the built-in client), plugin, or native",
    "instance": "relay instance id to use instead of the one found by its tags",
    "host": "database HOST[:PORT] to forward to instead of the RDS endpoint of the env",
    "raw": "plain TCP forwarding (your client does TLS and auth) instead of the auth proxy, which logs you in "
           "as your own DB user with no password",
    "unix_socket": "auth proxy on a Unix socket in this directory (made 0700) instead of a TCP port",
    "sessions": "Session Manager sessions behind the port, each new connection to the least loaded (one carries "
                "~1 MB/s; default: the env's [tunnel] sessions, else 1)",
    "target": "forward to this one of the env's [[targets]] (plain TCP) instead of its database",
})
def tunnel(c: Context, env: str = "", local_port: str = "", reason: str = "", background: bool = False,
           transport: str = "auto", instance: str = "", host: str = "", raw: bool = False,
           unix_socket: str = "", sessions: int = 0, target: str = "") -> None:
    """Open a tunnel to the env's database; ready once PostgreSQL answers through it. Ctrl-C stops it."""
    with ops_errors():
        from ops import inputs
        from ops.identity_tunnel import run

        run(_common.env(env), raw=raw, local_port=inputs.local_port(local_port), unix_socket=unix_socket,
            reason=reason, transport=transport, instance=instance, host=host, background=background,
            sessions=sessions or None, target=target)


@task(name="tunnels", help={})
def tunnels(c: Context) -> None:
    """List the tunnels running on this machine (env, port, sessions with bytes and MB/s now, uptime, reconnects)."""
    with ops_errors():
        from ops import tunnels_state

        print(tunnels_state.format_table(tunnels_state.list_tunnels()))
        for left in tunnels_state.list_orphans():
            print(f"orphaned: the tunnel to {left.env} (pid {left.pid}) is gone but left session(s) "
                  f"{', '.join(left.sessions)}; end them: invoke tunnel-close --env {left.env}")


@task(name="tunnel-close", help={
    "env": "environment whose tunnel to close",
    "all": "close every tunnel running on this machine",
})
def tunnel_close(c: Context, env: str = "", all: bool = False) -> None:
    """Close a running tunnel (its session is terminated), or all of them with --all."""
    with ops_errors():
        from ops import tunnels_state
        from ops.errors import OpsError

        if all == bool(env):
            raise OpsError("give either --env NAME or --all", next_step="invoke tunnels (lists them)")
        closed = tunnels_state.close_all() if all else [tunnels_state.close(env)]
        for record in closed:
            print(f"closed the tunnel to {record.env} (port {record.local_port}, session {record.session_id})")
        if not closed:
            print("no tunnels were running")
