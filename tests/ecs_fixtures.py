"""The `world` fixture: a healthy emulated environment (see tests/ecs_support.py) for a test module."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ops.config import load_env
from tests.ecs_support import ENV, TASK_IDS, World, build_world, sandbox_task
from tests.ssm_support import EndpointThread, free_port


@contextmanager
def moto_process(log: Path, *, managed_policies: bool = False) -> Iterator[str]:
    """moto in its own process: in-process moto servers share one global state, and other test modules
    build their own AWS accounts in it."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": str(managed_policies).lower()})
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"{url}/moto-api/", timeout=2):  # noqa: S310 - loopback
                        break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"moto_server did not start; see {log}") from None
                    time.sleep(0.1)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


@pytest.fixture(scope="module")
def ecs_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    state_dir = tmp_path_factory.mktemp("ecs-world")
    with moto_process(state_dir / "moto.log") as moto_url:
        yield from _world(moto_url, state_dir)


def _world(moto_url: str, state_dir: Path) -> Iterator[World]:
    endpoint: EndpointThread | None = None
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASTIONLESS_STATE_DIR", str(state_dir))
        for var in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
            mp.delenv(var, raising=False)
        try:
            cfg = load_env(ENV)
            ids = build_world(moto_url, cfg)
            endpoint = EndpointThread(moto_url=moto_url, state_dir=state_dir).start()
            (state_dir / "endpoints.json").write_text(json.dumps(
                {"default": moto_url, "ssm": endpoint.url, "ecs": endpoint.url}))
            box = World(cfg=cfg, moto_url=moto_url, endpoint=endpoint, state_dir=state_dir, ids=ids)
            box.tasks = [sandbox_task(cluster=ids["cluster"], service=ids["service"], task_def=ids["task_def"],
                                      tid=TASK_IDS[0])]
            box.write_tasks()
            yield box
        finally:
            if endpoint is not None:
                endpoint.stop()
