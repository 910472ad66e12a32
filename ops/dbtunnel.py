"""A database connection through an ephemeral tunnel: what `invoke migrate` and `invoke psql` open.

Here, not in ops.dburl: dburl only builds connection parameters and is what ops.tunnel uses for its
ready text, so the module that opens tunnels must not be imported by it (that was an import cycle).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ops import aws
from ops.aws import check_account
from ops.config import EnvConfig
from ops.dburl import ConnectionParams, for_tunnel
from ops.secrets import Credentials, database_credentials
from ops.tunnel import TunnelInfo, open_tunnel


@dataclass(frozen=True)
class Connection:
    """A ready tunnel plus how to use it; `password` stays in memory (repr-hidden)."""

    tunnel: TunnelInfo
    params: ConnectionParams
    credentials: Credentials


@contextmanager
def through_tunnel(cfg: EnvConfig, *, reason: str = "", transport: str = "auto",
                   report: Callable[[str], None] | None = None, sessions: int = 1,
                   break_glass: bool = False) -> Iterator[Connection]:
    """Account guard, credentials from Secrets Manager, an ephemeral tunnel on a free port (carried by
    `sessions` Session Manager sessions).

    `break_glass`: the master secret is read as the env's break-glass role (assumed here, with MFA; a
    refusal fails before any tunnel opens). The tunnel itself stays yours: only the secret is the role's.
    The tunnel (and its Session Manager sessions) is closed when the block ends, however it ends."""
    check_account(cfg)
    if break_glass:
        with aws.acting_as(aws.BREAK_GLASS):
            creds = database_credentials(cfg)
    else:
        creds = database_credentials(cfg)
    with sigterm_as_interrupt(), open_tunnel(cfg, local_port=0, reason=reason, transport=transport,
                                             report=report, sessions=sessions) as info:
        params = for_tunnel(cfg, local_port=info.local_port, db_host=info.db_host, db_name=info.db_name,
                            user=creds.username, local_host=info.local_host)
        yield Connection(tunnel=info, params=params, credentials=creds)


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into the Ctrl-C path so the tunnel's session is terminated before the process exits."""


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While a session is open: SIGTERM (a CI timeout, `kill`) unwinds like Ctrl-C instead of killing us with
    the session still open in AWS. Main thread only (signal handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: object) -> None:
        raise Terminated

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
