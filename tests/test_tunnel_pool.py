"""The pool's pure parts: choosing a session, metering it, and the parallel dump's arithmetic and argv."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ops import dbdump, tunnels_state
from ops.config import load_env
from ops.errors import OpsError
from ops.tunnel import LaneStats, Meter, Pool, Supervisor, TunnelInfo, check_sessions, describe_ready


def test_meter_gives_bytes_and_rate_per_session() -> None:
    meter = Meter()
    assert meter.sample([LaneStats("a", 10, 0, 1)], 100.0) == [("a", 10, 0.0, 1)]
    rows = meter.sample([LaneStats("a", 10, 2_000_010, 1), LaneStats("b", 0, 0, 0)], 102.0)
    assert rows == [("a", 2_000_020, 1.0, 1), ("b", 0, 0.0, 0)]


def test_pool_picks_the_least_loaded_ready_session() -> None:
    cfg = load_env("sandbox")
    pool = Pool(cfg, sessions=3, report=lambda _line: None)
    lanes = [Supervisor(cfg, report=lambda _line: None) for _ in range(3)]
    pool.lanes = lanes
    for lane, (phase, active) in zip(lanes, [("ready", 2), ("ready", 1), ("reconnecting", 0)], strict=True):
        lane.phase, lane._active = phase, active
    assert pool.pick() is lanes[1]  # the idle one is reconnecting: not chosen while another is ready
    lanes[0]._active = 1
    pool._given = {id(lanes[0]): 3, id(lanes[1]): 5}
    assert pool.pick() is lanes[0]  # equally loaded: the one given fewer connections so far
    for lane in lanes:
        lane.phase = "reconnecting"
    assert pool.pick() is lanes[2]  # none ready: the least loaded waits for its session


def test_sessions_out_of_range_is_one_line_with_the_fix() -> None:
    assert check_sessions(4) == 4
    with pytest.raises(OpsError, match="--sessions 0 is out of range") as err:
        check_sessions(0)
    assert err.value.next_step == "use 1 to 16"


def test_ready_text_says_how_many_sessions_carry_the_tunnel() -> None:
    cfg = load_env("sandbox")
    info = TunnelInfo(env="sandbox", local_host="127.0.0.1", local_port=5433, session_id="s-1", transport="native",
                      db_host="db", db_port=5432, db_name="app", db_user="app_admin", instance_id="i-1",
                      sessions=("s-1", "s-2", "s-3"))
    assert "transport  native (a pool of 3 sessions: s-1, s-2, s-3)" in describe_ready(cfg, info, background=False)
    one = TunnelInfo(**{**info.__dict__, "sessions": ("s-1",)})
    assert "transport  native (1 session: s-1)" in describe_ready(cfg, one, background=False)


def test_tunnels_table_lists_bytes_and_rate_per_session() -> None:
    now = time.time()
    record = tunnels_state.TunnelRecord(env="sandbox", pid=1, status="ready", local_port=5433, session_id="a,b",
                                        transport="native", started=now - 5,
                                        lanes=(("a", 12_300_000, 0.98, 2), ("b", 0, 0.0, 0)))
    lines = tunnels_state.format_table([record], now=now).splitlines()
    assert lines[1].split()[:4] == ["sandbox", "127.0.0.1:5433", "pool", "of"]
    assert lines[2].strip() == "session a: 12.3 MB, 0.98 MB/s now, 2 connection(s)"
    assert lines[3].strip() == "session b: 0.0 MB, 0.00 MB/s now, 0 connection(s)"
    again = tunnels_state.TunnelRecord.from_json({"env": "sandbox", "pid": 1, "lanes": [["a", 5, 0.5, 1]]})
    assert again.lanes == (("a", 5, 0.5, 1),)


def test_progress_estimates_what_one_session_would_have_taken() -> None:
    progress = dbdump.Progress(started=0.0)
    progress.sample([LaneStats("a", 0, 0, 1), LaneStats("b", 0, 0, 1)], 0.0)
    progress.sample([LaneStats("a", 0, 10_000_000, 1), LaneStats("b", 0, 10_000_000, 1)], 10.0)
    progress.sample([LaneStats("a", 0, 10_000_000, 1), LaneStats("b", 0, 10_000_000, 1)], 20.0)  # idle
    assert progress.total == 20_000_000
    assert progress.one_session_rate() == pytest.approx(1.0)
    summary = progress.summary(verb="dumped", sessions=2, now=10.0)
    assert summary.startswith("dumped 20.0 MB through 2 session(s) in 10.0 s (2.00 MB/s)")
    assert "one session (at its 1.00 MB/s) would have taken ~20 s (2.0x longer)" in summary


def test_dump_and_restore_argv_carry_no_credentials() -> None:
    argv = dbdump.dump_argv("/usr/bin/pg_dump", directory=Path("/d"), jobs=4, schema_only=True, tables=["orders"])
    assert argv == ["/usr/bin/pg_dump", "--format=directory", "--jobs=4", "--file=/d", "--no-password",
                    "--schema-only", "--table=orders"]
    argv = dbdump.restore_argv("/usr/bin/pg_restore", directory=Path("/d"), jobs=2, dbname="app")
    assert argv == ["/usr/bin/pg_restore", "--dbname=app", "--jobs=2", "--no-owner", "--no-privileges",
                    "--exit-on-error", "--no-password", "/d"]


def test_restore_into_production_is_refused_before_any_aws_call(tmp_path: Path) -> None:
    with pytest.raises(dbdump.DumpError, match="production environment") as err:
        dbdump.restore(load_env("prod"), tmp_path, jobs=2, yes=True)
    assert "invoke db-restore --env staging" in err.value.next_step


def test_dump_refuses_a_directory_that_holds_files(tmp_path: Path) -> None:
    (tmp_path / "old.dat").write_text("x")
    with pytest.raises(dbdump.DumpError, match="not an empty directory"):
        dbdump.dump(load_env("sandbox"), tmp_path, jobs=2)


def test_summary_without_byte_counts_says_so() -> None:
    progress = dbdump.Progress(started=0.0)
    progress.sample([LaneStats("a", 0, 0, 1)], 5.0)
    assert progress.summary(verb="dumped", sessions=1, now=5.0) == (
        "dumped through 1 session(s) in 5.0 s (no byte counts for this transport)")


def test_the_pool_says_reconnecting_while_any_of_its_sessions_is() -> None:
    cfg = load_env("sandbox")
    phases: list[str] = []
    pool = Pool(cfg, sessions=2, report=lambda _line: None, on_change=lambda p: phases.append(p.phase))
    pool.lanes = [Supervisor(cfg, report=lambda _line: None) for _ in range(2)]
    pool.phase = "ready"
    pool.lanes[0].phase, pool.lanes[1].phase = "reconnecting", "ready"
    pool._lane_changed(pool.lanes[0])
    pool.lanes[0].phase = "ready"
    pool._lane_changed(pool.lanes[0])
    assert phases == ["reconnecting", "ready"]
