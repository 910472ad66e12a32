"""The `world` fixture: a healthy emulated environment (see tests/ecs_support.py) for a test module."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from ops.config import load_env
from tests.ecs_support import ENV, TASK_IDS, EcsWorld, build_world, sandbox_task
from tests.ssm_support import EndpointThread, reset_moto
from tests.tiers import require_tool


@pytest.fixture(scope="session")
def tmux_bin() -> str:
    """The interactive ECS shell test drives a real terminal through tmux (./dev installs it on Debian)."""
    return require_tool(shutil.which("tmux"), "tmux is not installed (Debian: tmux)")


@pytest.fixture(scope="module")
def ecs_world(tmp_path_factory: pytest.TempPathFactory, moto_server_process: str) -> Iterator[EcsWorld]:
    """The session's moto server, emptied first (tests.tunnel_fixtures.moto_server_process)."""
    reset_moto(moto_server_process)
    yield from _world(moto_server_process, tmp_path_factory.mktemp("ecs-world"))


def _world(moto_url: str, state_dir: Path) -> Iterator[EcsWorld]:
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
            box = EcsWorld(cfg=cfg, moto_url=moto_url, endpoint=endpoint, state_dir=state_dir, ids=ids)
            box.tasks = [sandbox_task(cluster=ids["cluster"], service=ids["service"], task_def=ids["task_def"],
                                      tid=TASK_IDS[0])]
            box.write_tasks()
            yield box
        finally:
            if endpoint is not None:
                endpoint.stop()
