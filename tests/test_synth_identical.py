"""The fast import is an optimisation only: the Terraform JSON is byte-for-byte the stock import's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ops.config import available_envs, load_env
from ops.synth import STOCK_IMPORT_ENV, SYNTH_FILE, synth_many


@pytest.mark.slow
def test_fast_and_stock_import_synthesize_identical_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         synth_dirs: dict[str, Path]) -> None:
    cfgs = [load_env(name) for name in available_envs()]
    assert {"sandbox", "prod"} <= {c.name for c in cfgs}
    # The session's synthesis (the fast import: nothing sets the switch for it), shared with the stack tests.
    assert os.environ.get(STOCK_IMPORT_ENV) != "1"
    fast = synth_dirs
    assert set(fast) == {c.name for c in cfgs}
    monkeypatch.setenv(STOCK_IMPORT_ENV, "1")
    stock = synth_many(cfgs, force=True, outdir=tmp_path / "stock")

    for cfg in cfgs:
        fast_bytes = (fast[cfg.name] / SYNTH_FILE).read_bytes()
        stock_bytes = (stock[cfg.name] / SYNTH_FILE).read_bytes()
        assert len(fast_bytes) > 1000, f"{cfg.name}: suspiciously small synth output"
        assert fast_bytes == stock_bytes, f"{cfg.name}: the fast import changed the synthesized JSON"
