"""A database connection through an ephemeral tunnel: what `invoke migrate` and `invoke psql` open.

Here, not in ops.dburl: dburl only builds connection parameters and is what ops.tunnel uses for its
ready text, so the module that opens tunnels must not be imported by it (that was an import cycle).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

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
                   report: Callable[[str], None] | None = None) -> Iterator[Connection]:
    """Account guard, credentials from Secrets Manager, an ephemeral tunnel on a free port.

    The tunnel (and its Session Manager session) is closed when the block ends, however it ends."""
    check_account(cfg)
    creds = database_credentials(cfg)
    with open_tunnel(cfg, local_port=0, reason=reason, transport=transport, report=report) as info:
        params = for_tunnel(cfg, local_port=info.local_port, db_host=info.db_host, db_name=info.db_name,
                            user=creds.username, local_host=info.local_host)
        yield Connection(tunnel=info, params=params, credentials=creds)
