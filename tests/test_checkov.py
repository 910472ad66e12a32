"""checkov on every environment's synthesized JSON: no failures except the reasoned skips in checkov-skips.toml."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from ops.config import available_envs
from tests.conftest import PROJECT_ROOT
from tests.tiers import missing_tool

CHECKOV = PROJECT_ROOT / ".venv" / "bin" / "checkov"
SKIPS_FILE = PROJECT_ROOT / "checkov-skips.toml"


def load_skips() -> list[dict[str, Any]]:
    skips: list[dict[str, Any]] = tomllib.loads(SKIPS_FILE.read_text())["skip"]
    return skips


def skips_for(env: str) -> list[str]:
    return [s["id"] for s in load_skips() if env in s.get("envs", [env])]


def test_every_skip_has_a_reason_and_known_envs() -> None:
    envs = set(available_envs())
    for skip in load_skips():
        assert len(str(skip.get("reason", "")).strip()) >= 40, f"{skip['id']}: write why the check is skipped"
        assert set(skip.get("envs", [])) <= envs, f"{skip['id']}: unknown environment"


def scannable(synth_dir: Path, tmp_path: Path) -> Path:
    """checkov 3.2's terraform_json parser expects every entry of the `terraform` block to be an object and
    crashes on `required_version` (a string): a copy of the synthesized file without that one line."""
    doc = json.loads((synth_dir / "cdk.tf.json").read_text())
    doc.get("terraform", {}).pop("required_version", None)
    scanned = tmp_path / "cdk.tf.json"
    scanned.write_text(json.dumps(doc))
    return scanned


_runs: dict[str, tuple[dict[str, Path], dict[str, Any]]] = {}


def checkov(env: str, synth_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
            ) -> tuple[Path, dict[str, Any]]:
    """(The scanned file, checkov's report on it, the env's reasoned skips taken out as `--skip-check` would.)

    One checkov run scans every environment (each in a folder of its own) for the tests below: checkov takes
    ~2 s of CPU to start, most of it importing its checks, and ~1 s a file. No check is skipped in that run;
    each env's view drops the failures its skips name."""
    if "all" not in _runs:
        if not CHECKOV.is_file():
            missing_tool("checkov is not installed in .venv (./dev test installs it)")
        root = tmp_path_factory.mktemp("checkov")
        files = {name: scannable(path, _folder(root / name)) for name, path in synth_dirs.items()}
        argv = [str(CHECKOV), *(arg for f in files.values() for arg in ("-f", str(f))), "--framework",
                "terraform_json", "--output", "json", "--compact", "--skip-download"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False)
        try:
            report = json.loads(proc.stdout)
        except ValueError as exc:
            # Seen once (under a profiler): the report cut at 256 KiB with something else after it. Show what.
            at = getattr(exc, "pos", 0)
            raise AssertionError(f"checkov's report is not JSON ({exc}), exit {proc.returncode}; around it: "
                                 f"{proc.stdout[max(0, at - 300):at + 300]!r}; stderr: {proc.stderr[-2000:]}") from exc
        assert isinstance(report, dict) and "results" in report, proc.stderr[-2000:]
        _runs["all"] = files, report
    files, report = _runs["all"]
    scanned, skipped = files[env], set(skips_for(env))
    # checkov names a check's file by its path from the working directory (with a leading "/"), a parsing
    # error's by the path given: both end in the run's folder, the env's folder and the file.
    suffix = "/" + "/".join(scanned.parts[-3:])

    def mine(path: str) -> bool:
        return path.endswith(suffix)

    results = report["results"]
    view = {"passed_checks": [c for c in results["passed_checks"] if mine(c["file_path"])],
            "failed_checks": [c for c in results["failed_checks"]
                              if mine(c["file_path"]) and c["check_id"] not in skipped],
            "parsing_errors": [e for e in results.get("parsing_errors", []) if mine(e)]}
    return scanned, {"results": view, "summary": {"passed": len(view["passed_checks"])}}


def _folder(path: Path) -> Path:
    path.mkdir()
    return path


@pytest.mark.slow
@pytest.mark.parametrize("env", available_envs())
def test_checkov_passes(env: str, synth_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> None:
    _, report = checkov(env, synth_dirs, tmp_path_factory)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in report["results"]["failed_checks"]]
    assert failed == [], f"{env}: checkov failures (fix, or add to {SKIPS_FILE.name} with a reason)"
    assert report["results"]["parsing_errors"] == [], f"{env}: checkov could not parse the file"
    assert summary["passed"] > 50, "checkov ran its AWS checks on the file"


# checkov's IAM checks on policy documents (privilege escalation, exfiltration, permissions management,
# credentials exposure, write without constraints, "*" for restrictable actions): the data-source forms of
# CKV_AWS_286-290 and CKV_AWS_355, which report nothing (UNKNOWN) for a policy that is a JSON string.
IAM_DOCUMENT_CHECKS = ("CKV_AWS_107", "CKV_AWS_108", "CKV_AWS_109", "CKV_AWS_110", "CKV_AWS_111", "CKV_AWS_356")


@pytest.mark.slow
@pytest.mark.parametrize("env", available_envs())
def test_checkov_evaluates_every_iam_policy_none_unknown(env: str, synth_dirs: dict[str, Path],
                                                        tmp_path_factory: pytest.TempPathFactory) -> None:
    assert not set(IAM_DOCUMENT_CHECKS) & set(skips_for(env)), f"{env}: the IAM document checks may not be skipped"
    path, report = checkov(env, synth_dirs, tmp_path_factory)
    doc = json.loads(path.read_text())
    role_policies = doc["resource"].get("aws_iam_role_policy", {})
    assert role_policies
    for name, policy in role_policies.items():
        assert str(policy["policy"]).startswith("${data.aws_iam_policy_document."), \
            f"{name}: a JSON-string policy is invisible to checkov; build it with stacks.policy_document"
    documents = set(doc["data"]["aws_iam_policy_document"])
    results = report["results"]
    failed = [f"{c['check_id']} {c['resource']}" for c in results["failed_checks"]
              if c["check_id"] in IAM_DOCUMENT_CHECKS]
    assert failed == []
    seen: dict[str, set[str]] = {}
    for check in results["passed_checks"]:
        seen.setdefault(check["resource"].split(".", 2)[-1], set()).add(check["check_id"])
    unknown = {name: sorted(set(IAM_DOCUMENT_CHECKS) - seen.get(name, set())) for name in documents}
    assert {k: v for k, v in unknown.items() if v} == {}, "checkov left these IAM checks UNKNOWN"
