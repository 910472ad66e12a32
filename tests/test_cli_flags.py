"""Flags a newcomer types: `-e` for every `--env`, `-h` always help, the real default port in the help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from invoke import Parser, ParserContext

from ops.config import available_envs, load_env
from tests.conftest import PROJECT_ROOT
from tests.test_cli import _namespace, task_arguments


def _with_env() -> list[str]:
    ns = _namespace()
    return sorted(n for n in ns.task_names if any(a.name == "env" for a in task_arguments(ns[n])))


def test_every_task_with_env_takes_dash_e() -> None:
    ns = _namespace()
    names = _with_env()
    assert "tunnel" in names and "deploy" in names and "sandbox" in names
    missing = [n for n in names if "e" not in next(a for a in task_arguments(ns[n]) if a.name == "env").names]
    assert not missing, f"tasks whose --env has no -e: {missing}"


def test_tunnel_parses_dash_e_and_keeps_dash_h_for_help() -> None:
    ns = _namespace()
    args = task_arguments(ns["tunnel"])
    assert not any("h" in a.names for a in args), "-h must stay help, not --host"
    context = ParserContext(name="tunnel", args=args)
    parsed = Parser(contexts=[context]).parse_argv(["tunnel", "-e", "staging"])
    assert parsed[0].args["env"].value == "staging"


def test_local_port_help_shows_each_envs_real_default() -> None:
    ns = _namespace()
    for task, flag in (("tunnel", "local_port"), ("dbeaver", "port"), ("db-url", "port")):
        help_text = next(a for a in task_arguments(ns[task]) if a.name == flag).help
        for name in available_envs():
            assert f"{name} {load_env(name).tunnel.local_port}" in help_text, (task, help_text)


@pytest.mark.usefixtures("real_io")
def test_invoke_help_of_tunnel_prints_the_staging_port() -> None:
    proc = subprocess.run([sys.executable, "-m", "invoke", "--help", "tunnel"], cwd=PROJECT_ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert f"staging {load_env('staging').tunnel.local_port}" in text
    assert "-e STRING, --env=STRING" in text


@pytest.mark.usefixtures("real_io")
def test_the_readme_completion_commands_work_and_complete_our_flags() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    for shell in ("bash", "zsh", "fish"):
        assert f"invoke --print-completion-script {shell}" in readme
        proc = subprocess.run([sys.executable, "-m", "invoke", "--print-completion-script", shell], cwd=PROJECT_ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and "invoke" in proc.stdout.lower(), proc.stderr
    proc = subprocess.run([sys.executable, "-m", "invoke", "--complete", "--", "invoke", "tunnel", "-"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert {"-e", "--env", "--local-port"} <= set(proc.stdout.split()), proc.stdout
