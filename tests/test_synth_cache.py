"""ops.synth: the synthesis cache and how a failing app reaches the user.

Each test works on a copy of the project's app (main.py, stacks/, ops/, envs/) in a tmp dir, so it
can edit inputs freely and never touches the working tree's cdktf.out/.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from ops.config import EnvConfig, load_env
from ops.errors import ConfigError, OpsError
from ops.synth import FIXED_INPUTS, LOG_FILE, STAMP_FILE, SYNTH_FILE, inputs_digest, synth, synth_many
from tests.conftest import PROJECT_ROOT

_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True)
    for name in ("main.py", "cdktf.json"):
        shutil.copy2(PROJECT_ROOT / name, dest / name)
    for name in ("ops", "stacks", "envs"):
        shutil.copytree(PROJECT_ROOT / name, dest / name, ignore=_IGNORE)
    return dest


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return copy_project(tmp_path / "project")


@pytest.fixture(scope="module")
def _cached_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    template = copy_project(tmp_path_factory.mktemp("template") / "project")
    synth(_cfg(template), project_root=template)
    return template


@pytest.fixture
def cached_project(tmp_path: Path, _cached_template: Path) -> Path:
    """A copy of the app whose sandbox synth is done and current (stamp and all): for the tests that
    start from a cached synth, one synth child for the module instead of one each (~2 s of CPU)."""
    dest = tmp_path / "project"
    shutil.copytree(_cached_template, dest)
    return dest


def _cfg(project: Path, name: str = "sandbox") -> EnvConfig:
    return load_env(name, project / "envs")


def _poison_cdktf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, message: str) -> None:
    """Make any synth child fail at `import cdktf`: proves whether a child ran at all."""
    poison = tmp_path / "poison"
    poison.mkdir(exist_ok=True)
    (poison / "cdktf.py").write_text(f"raise RuntimeError({message!r})\n")
    monkeypatch.setenv("PYTHONPATH", str(poison))


def _identity(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.usefixtures("real_io")
def test_unchanged_inputs_reuse_the_output_without_running_the_app(
        project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(project)
    out = synth(cfg, project_root=project)
    assert out == project / "cdktf.out" / "stacks" / "bastionless-sandbox"
    data = json.loads((out / SYNTH_FILE).read_text())
    assert "resource" in data and "terraform" in data
    first = _identity(out / SYNTH_FILE)
    assert "synthesizing sandbox... " in capfd.readouterr().err

    # The environment is not an input: if a child ran now it would fail on the poisoned cdktf.
    _poison_cdktf(tmp_path, monkeypatch, "a synth child ran although nothing changed")
    assert synth(cfg, project_root=project) == out
    assert _identity(out / SYNTH_FILE) == first
    err = capfd.readouterr().err
    assert "sandbox: unchanged, using cached synth" in err
    assert "synthesizing" not in err

    # ...and the poison is real: forcing a run fails with its message, as one line.
    with pytest.raises(OpsError) as exc:
        synth(cfg, project_root=project, force=True)
    assert "a synth child ran although nothing changed" in exc.value.message
    assert "Traceback" not in exc.value.message
    assert f"full output in cdktf.out/{LOG_FILE}" in exc.value.message
    assert "Traceback" in (project / "cdktf.out" / LOG_FILE).read_text()


@pytest.mark.usefixtures("real_io")
def test_every_input_is_in_the_digest(cached_project: Path) -> None:
    """The stamp lists the project files the app imported, and a change in any of them (or in the env
    file, cdktf.json, the node preload) changes the digest the cache compares."""
    cfg = _cfg(cached_project)
    out = synth(cfg, project_root=cached_project)
    files = json.loads((out / STAMP_FILE).read_text())["files"]
    # What the app really imports, also outside stacks/ (ops.facts was missing from the old hand-kept list).
    assert {"main.py", "stacks/__init__.py", "stacks/stack.py", "ops/config.py", "ops/facts.py"} <= set(files)
    assert "ops/tunnel.py" not in files and not any(f.startswith((".venv/", "tests/")) for f in files)
    before = inputs_digest(cfg, project_root=cached_project)
    assert before
    for rel in [*files, *FIXED_INPUTS, "envs/sandbox.toml"]:
        path = cached_project / rel
        original = path.read_bytes()
        path.write_bytes(original + b"\n")
        try:
            assert inputs_digest(cfg, project_root=cached_project) != before, f"an edit of {rel} is not noticed"
        finally:
            path.write_bytes(original)
    assert inputs_digest(cfg, project_root=cached_project) == before


@pytest.mark.usefixtures("real_io")
def test_a_new_import_is_recorded_and_then_watched(cached_project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(cached_project)
    synth(cfg, project_root=cached_project)
    (cached_project / "stacks" / "extra_fact.py").write_text("EXTRA = 1\n")
    stack = cached_project / "stacks" / "stack.py"
    stack.write_text(stack.read_text() + "\nimport stacks.extra_fact  # noqa: E402,F401\n")
    capfd.readouterr()
    out = synth(cfg, project_root=cached_project)
    assert "synthesizing sandbox... " in capfd.readouterr().err
    assert "stacks/extra_fact.py" in json.loads((out / STAMP_FILE).read_text())["files"]
    before = inputs_digest(cfg, project_root=cached_project)
    (cached_project / "stacks" / "extra_fact.py").write_text("EXTRA = 2\n")
    assert inputs_digest(cfg, project_root=cached_project) != before
    synth(cfg, project_root=cached_project)
    assert "synthesizing sandbox... " in capfd.readouterr().err


def test_no_synth_yet_has_no_digest(project: Path) -> None:
    assert inputs_digest(_cfg(project), project_root=project) == ""


@pytest.mark.usefixtures("real_io")
def test_editing_the_env_file_resynthesizes(cached_project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(cached_project)
    out = synth(cfg, project_root=cached_project)
    assert "sandbox: unchanged, using cached synth" in capfd.readouterr().err, "the copied synth is current"
    first = _identity(out / SYNTH_FILE)
    with (cached_project / "envs" / "sandbox.toml").open("a") as f:
        f.write("\n# an edit\n")
    capfd.readouterr()
    synth(cfg, project_root=cached_project)
    assert "synthesizing sandbox... " in capfd.readouterr().err
    assert _identity(out / SYNTH_FILE) != first


@pytest.mark.usefixtures("real_io")
def test_other_environments_files_are_not_inputs(cached_project: Path) -> None:
    cfg = _cfg(cached_project)
    synth(cfg, project_root=cached_project)
    before = inputs_digest(cfg, project_root=cached_project)
    assert before
    with (cached_project / "envs" / "prod.toml").open("a") as f:
        f.write("\n# an edit\n")
    assert inputs_digest(cfg, project_root=cached_project) == before


@pytest.mark.usefixtures("real_io")
def test_force_or_a_missing_output_resynthesizes(cached_project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfg = _cfg(cached_project)
    out = synth(cfg, project_root=cached_project)
    capfd.readouterr()
    synth(cfg, project_root=cached_project, force=True)
    assert "synthesizing sandbox... " in capfd.readouterr().err
    (out / SYNTH_FILE).unlink()
    synth(cfg, project_root=cached_project)
    assert "synthesizing sandbox... " in capfd.readouterr().err
    assert (out / SYNTH_FILE).is_file()


@pytest.mark.usefixtures("real_io")
def test_several_environments_synthesize_in_one_run(project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    cfgs = [_cfg(project, n) for n in ("prod", "sandbox", "staging")]
    paths = synth_many(cfgs, project_root=project)
    err = capfd.readouterr().err
    assert err.count("synthesizing ") == 1 and "synthesizing prod, sandbox, staging... " in err
    for cfg in cfgs:
        data = json.loads((paths[cfg.name] / SYNTH_FILE).read_text())
        assert data["//"]["metadata"]["stackName"] == cfg.stack_name
        assert (paths[cfg.name] / STAMP_FILE).is_file()
    # Only the stale one runs next time.
    with (project / "envs" / "staging.toml").open("a") as f:
        f.write("\n# an edit\n")
    synth_many(cfgs, project_root=project)
    err = capfd.readouterr().err
    assert "synthesizing staging... " in err
    assert "prod: unchanged" in err and "sandbox: unchanged" in err


@pytest.mark.usefixtures("real_io")
def test_failed_run_invalidates_the_old_stamp(cached_project: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(cached_project)
    out = synth(cfg, project_root=cached_project)
    with (cached_project / "envs" / "sandbox.toml").open("a") as f:
        f.write("\n# an edit\n")
    _poison_cdktf(tmp_path, monkeypatch, "broken toolchain")
    with pytest.raises(OpsError, match="broken toolchain"):
        synth(cfg, project_root=cached_project)
    assert not (out / STAMP_FILE).exists(), "a failed synth must not leave the old stamp to be trusted"
    assert not list((cached_project / "cdktf.out").glob(".synth-*")), "the private work dir is cleaned up"


@pytest.mark.usefixtures("real_io")
def test_project_module_missing_names_the_file(project: Path) -> None:
    # Deleting a module from the copy is not enough: the editable install (`pip install -e .`) finds the
    # working tree's stacks/ for anything missing in the copy. A module that exists nowhere is missing.
    main = project / "main.py"
    main.write_text(main.read_text().replace("from stacks.stack import", "from stacks.stack_deleted import"))
    with pytest.raises(OpsError) as exc:
        synth(_cfg(project), project_root=project)
    assert "No module named 'stacks.stack_deleted'" in exc.value.message
    assert "a project file is missing" in exc.value.message


def test_env_loaded_from_elsewhere_is_refused(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "elsewhere" / "envs"
    other.mkdir(parents=True)
    shutil.copy2(project / "envs" / "sandbox.toml", other / "sandbox.toml")
    with pytest.raises(ConfigError, match="synth reads environments from the project's envs/"):
        synth(load_env("sandbox", other), project_root=project)
