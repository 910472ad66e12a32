"""moto server as the sandbox's AWS API: its own process, loopback only, health-checked.

`python -m ops.sandbox.moto -p PORT` serves moto as the sandbox does (`serve`), without IAM enforcement:
for tests that arrange AWS-side state as any account. The sandbox itself runs ops.sandbox.moto_iam.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ops.config import PROJECT_ROOT
from ops.errors import ToolMissingError
from ops.sandbox import procs
from ops.sandbox.procs import ProcRecord, StartError

START_TIMEOUT = 60.0
INSTALL_HINT = "install the sandbox extra: .venv/bin/uv pip install -e '.[sandbox]' (or run ./dev test once)"


def moto_server_binary() -> str:
    """moto_server next to this interpreter (the venv), else on PATH."""
    beside = Path(sys.executable).parent / "moto_server"
    if beside.is_file():
        return str(beside)
    found = shutil.which("moto_server")
    if found is None:
        raise ToolMissingError(f"moto_server (the sandbox's AWS API emulator) is not installed; {INSTALL_HINT}")
    return found


def health_url(url: str) -> str:
    return f"{url.rstrip('/')}/moto-api/"


def healthy(url: str) -> bool:
    return procs.http_ok(health_url(url))


def start(*, state: Path, port: int) -> ProcRecord:
    """Start moto_server on 127.0.0.1:port and wait until it answers."""
    moto_server_binary()  # the moto package is installed (same check, same hint)
    log = state / "moto.log"
    env = dict(os.environ)
    # AWS managed policies (the ECS execution role attaches AmazonECSTaskExecutionRolePolicy) exist in moto only
    # with this.
    env["MOTO_IAM_LOAD_MANAGED_POLICIES"] = "true"
    # Whatever account the user's shell points at must not leak into the emulator.
    for var in ("MOTO_ACCOUNT_ID", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        env.pop(var, None)
    # moto_server itself, with IAM enforced on every request (ops.sandbox.moto_iam explains how).
    proc = procs.start_detached([sys.executable, "-m", "ops.sandbox.moto_iam", "-H", procs.LOOPBACK, "-p", str(port)],
                                log=log, env=env, cwd=PROJECT_ROOT)
    url = f"http://{procs.LOOPBACK}:{port}"
    record = procs.record_for(proc, port=port, log=log, url=url)
    if not procs.wait_until(lambda: healthy(url), timeout=START_TIMEOUT, alive=lambda: proc.poll() is None):
        procs.stop(record)
        raise StartError(f"moto_server did not start on port {port}: {procs.log_tail(log) or 'no output'}",
                         next_step=f"see {log}")
    return record


# A WSGI application: moto's, or a launcher's wrapper around it.
Wsgi = Callable[[dict[str, Any], Any], Iterable[bytes]]


def request_handler() -> type[Any]:
    """moto's request handler, answering each request in one write (headers and body together).

    werkzeug writes a response's headers and its body with separate sends. On a loaded machine the body
    followed the headers by up to ~75 ms, and the AWS provider's Go client then closed the connection
    before the body came (seen on the wire: headers, client FIN, body, client RST) and sent the call again:
    about one call per deploy, and when the call was AuthorizeSecurityGroupEgress or CreateAlias moto had
    already applied it, so the deploy failed with InvalidPermission.Duplicate or AlreadyExistsException.
    AWS answers each request whole; so does the emulator now (no retried call in 9 loaded deploys, ~1 per
    deploy before).
    """
    from moto.moto_server.werkzeug_app import MotoRequestHandler

    class OneWriteRequestHandler(MotoRequestHandler):
        # A buffered wfile that werkzeug flushes once, after the body; answers up to 1 MiB fit (moto's are KBs).
        wbufsize = 1 << 20

    return OneWriteRequestHandler


def _cut_per_request_work() -> None:
    """Two costs moto_server pays on every request that answer nothing about AWS (~25 % of its CPU in a deploy):

    - finding the backend lists moto's package directory and stats each of its ~190 entries, per request
      (moto.backends.list_of_moto_modules); the installed package does not change while it serves;
    - werkzeug's access log writes a line per request through a colour-converting stream. Warnings and
      errors (a failed request's traceback) are still logged.
    """
    import logging

    from moto import backends

    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    _one_model_loader()


def _one_model_loader() -> None:
    """Each botocore data file decoded once per process (a sandbox moto's CPU over a deploy: 4.9 -> ~3.5 s).

    moto reads a service's model with a loader of its own (moto.core.utils), lists the service's regions
    through a botocore session (which reads the model again, and the endpoints), and EC2's import makes
    yet another session for its regions: each new loader decodes the same JSON anew (the EC2 model alone
    is ~40 ms). All of them now share one loader per data path, which caches what it decoded: the same
    files, the same data (boto3 adds its own data folder to a session's loader: it holds no service models).
    """
    import functools

    import botocore.loaders
    import botocore.session
    from moto.core import utils

    @functools.cache
    def loader(search_path_string: str | None) -> botocore.loaders.Loader:
        return botocore.loaders.create_loader(search_path_string)

    def shared(search_path_string: str | None = None) -> botocore.loaders.Loader:
        # moto passes nothing, botocore its data_path setting (None unless configured): one loader for both.
        return loader(search_path_string)

    # Both modules import the name; neither re-exports it.
    setattr(botocore.session, "create_loader", shared)  # noqa: B010
    setattr(utils, "create_loader", shared)  # noqa: B010


def serve(host: str, port: int, *, wrap: Callable[[Wsgi], Wsgi] | None = None) -> None:
    """moto_server's application on host:port until SIGINT/SIGTERM, each answer in one write; `wrap` it
    to put a launcher's own routes or checks in front."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
    from werkzeug.serving import run_simple

    _cut_per_request_work()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda _s, _f: sys.exit(0))
    app: Wsgi = DomainDispatcherApplication(create_backend_app)
    sys.stderr.write(f"moto serving on http://{host}:{port}\n")
    run_simple(host, port, wrap(app) if wrap else app, threaded=True, request_handler=request_handler())


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="moto_server as the sandbox serves it, without IAM enforcement")
    parser.add_argument("-H", "--host", default=procs.LOOPBACK, help="loopback address to listen on")
    parser.add_argument("-p", "--port", type=int, required=True, help="port to listen on")
    args = parser.parse_args(argv)
    serve(args.host, args.port)


if __name__ == "__main__":
    main()
