"""ecs-shell decisions on DescribeTasks-shaped data: task and container choice, preflight lines, plugin argv."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from ops.ecs_exec import (
    EcsExecError,
    agent_problem,
    choose_container,
    choose_task,
    plugin_invocation,
    preflight_problems,
    reason_user_agent,
    runtime_id,
)

CLUSTER = "bastionless-prod"
SERVICE = "bastionless-prod-api"


def task(tid: str, *, minute: int = 0, containers: tuple[str, ...] = ("app",), **overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "taskArn": f"arn:aws:ecs:eu-west-1:111122223333:task/{CLUSTER}/{tid}",
        "taskDefinitionArn": "arn:aws:ecs:eu-west-1:111122223333:task-definition/api:7",
        "lastStatus": "RUNNING", "desiredStatus": "RUNNING", "launchType": "FARGATE", "platformVersion": "1.4.0",
        "enableExecuteCommand": True, "availabilityZone": "eu-west-1b", "group": f"service:{SERVICE}",
        "startedAt": datetime(2026, 11, 24, 10, minute, tzinfo=UTC),
        "containers": [{"name": c, "runtimeId": f"{tid}-{i}",
                        "managedAgents": [{"name": "ExecuteCommandAgent", "lastStatus": "RUNNING"}]}
                       for i, c in enumerate(containers)],
    }
    data.update(overrides)
    return data


class Recorder:
    def __init__(self, answer: int) -> None:
        self.answer = answer
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, title: str, options: Any) -> int:
        self.calls.append((title, list(options)))
        return self.answer


# ---- task selection ----

def test_the_only_running_task_is_chosen_without_asking() -> None:
    chooser = Recorder(0)
    chosen = choose_task([task("aaa"), task("bbb", lastStatus="STOPPED")], service=SERVICE, interactive=True,
                         chooser=chooser)
    assert chosen["taskArn"].endswith("/aaa")
    assert chooser.calls == []


def test_several_tasks_without_a_tty_require_task_and_list_them() -> None:
    with pytest.raises(EcsExecError) as info:
        choose_task([task("aaa"), task("bbb")], service=SERVICE, interactive=False, chooser=Recorder(0))
    assert "aaa" in info.value.message and "bbb" in info.value.message
    assert "--task" in info.value.next_step


def test_several_tasks_at_a_tty_are_listed_newest_first_with_started_revision_and_az() -> None:
    chooser = Recorder(1)
    chosen = choose_task([task("old", minute=1), task("new", minute=30)], service=SERVICE, interactive=True,
                         chooser=chooser)
    (_, options), = chooser.calls
    assert options[0].startswith("new") and options[1].startswith("old")
    assert "2026-11-24 10:30:00" in options[0] and "api:7" in options[0] and "eu-west-1b" in options[0]
    assert chosen["taskArn"].endswith("/old")


def test_no_running_task_names_the_service() -> None:
    with pytest.raises(EcsExecError, match=SERVICE):
        choose_task([task("aaa", lastStatus="PENDING")], service=SERVICE, interactive=True, chooser=Recorder(0))


# ---- container selection ----

def test_container_only_one_default_given_or_ask() -> None:
    one = task("aaa")
    two = task("bbb", containers=("app", "sidecar"))
    assert choose_container(one, container="", default="", interactive=False, chooser=None) == "app"
    assert choose_container(two, container="", default="sidecar", interactive=False, chooser=None) == "sidecar"
    assert choose_container(two, container="app", default="sidecar", interactive=False, chooser=None) == "app"
    chooser = Recorder(1)
    assert choose_container(two, container="", default="", interactive=True, chooser=chooser) == "sidecar"
    assert chooser.calls[0][1] == ["app", "sidecar"]
    with pytest.raises(EcsExecError) as info:
        choose_container(two, container="", default="", interactive=False, chooser=None)
    assert "--container" in info.value.next_step
    with pytest.raises(EcsExecError, match="no container 'web'"):
        choose_container(two, container="web", default="", interactive=True, chooser=chooser)


# ---- preflight ----

def test_healthy_task_has_no_problems() -> None:
    assert preflight_problems(task("aaa"), "app", cluster=CLUSTER, service=SERVICE) == []


def test_exec_disabled_names_update_service_and_new_deployment() -> None:
    (line,) = preflight_problems(task("aaa", enableExecuteCommand=False), "app", cluster=CLUSTER, service=SERVICE)
    assert "\n" not in line
    assert (f"aws ecs update-service --cluster {CLUSTER} --service {SERVICE} --enable-execute-command "
            "--force-new-deployment") in line
    assert "only applies to tasks started after it" in line


@pytest.mark.parametrize(("status", "needle"), [
    ("PENDING", "wait a minute"),
    ("STOPPED", "ssmmessages:CreateControlChannel"),
])
def test_agent_not_running(status: str, needle: str) -> None:
    t = task("aaa")
    t["containers"][0]["managedAgents"][0].update(lastStatus=status, reason="TLS handshake timeout")
    (line,) = preflight_problems(t, "app", cluster=CLUSTER, service=SERVICE)
    assert f"is {status}" in line or status in line
    assert needle in line
    assert "\n" not in line


def test_agent_missing_on_a_container() -> None:
    t = task("aaa")
    t["containers"][0]["managedAgents"] = []
    problem = agent_problem(t, "app")
    assert problem is not None and "has no ExecuteCommandAgent" in problem[1]


@pytest.mark.parametrize(("version", "family", "launch", "ok"), [
    ("1.3.0", "Linux", "FARGATE", False),
    ("1.4.0", "Linux", "FARGATE", True),
    ("LATEST", "Linux", "FARGATE", True),
    ("1.0.0", "WINDOWS_SERVER_2019_CORE", "FARGATE", True),
    ("1.3.0", "", "EC2", True),
])
def test_fargate_platform_version(version: str, family: str, launch: str, ok: bool) -> None:
    t = task("aaa", platformVersion=version, platformFamily=family, launchType=launch)
    problems = preflight_problems(t, "app", cluster=CLUSTER, service=SERVICE)
    if ok:
        assert problems == []
    else:
        (line,) = problems
        assert "platform 1.3.0" in line and ">= 1.4.0" in line and "fix:" in line


def test_every_failure_is_reported_at_once() -> None:
    t = task("aaa", enableExecuteCommand=False, platformVersion="1.3.0", lastStatus="STOPPED")
    problems = preflight_problems(t, "app", cluster=CLUSTER, service=SERVICE)
    assert len(problems) == 3
    assert all("fix:" in p for p in problems)


# ---- hand-off ----

def test_plugin_invocation_matches_the_aws_cli_with_the_token_only_in_env() -> None:
    session = {"sessionId": "ecs-execute-command-0abc", "streamUrl": "wss://ssmmessages.eu-west-1.amazonaws.com/v1/x",
               "tokenValue": "tok-secret-value"}
    argv, env = plugin_invocation(plugin="session-manager-plugin", session=session, region="eu-west-1",
                                  profile="prod", target=f"ecs:{CLUSTER}_aaa_aaa-0",
                                  endpoint_url="https://ecs.eu-west-1.amazonaws.com", base_env={"HOME": "/h"})
    assert argv[0] == "session-manager-plugin"
    assert argv[1] == "AWS_SSM_START_SESSION_RESPONSE"
    assert argv[2:5] == ["eu-west-1", "StartSession", "prod"]
    assert json.loads(argv[5]) == {"Target": f"ecs:{CLUSTER}_aaa_aaa-0"}
    assert argv[6] == "https://ecs.eu-west-1.amazonaws.com"
    assert not any("tok-secret-value" in a for a in argv)
    assert json.loads(env["AWS_SSM_START_SESSION_RESPONSE"]) == {
        "SessionId": "ecs-execute-command-0abc", "TokenValue": "tok-secret-value",
        "StreamUrl": "wss://ssmmessages.eu-west-1.amazonaws.com/v1/x"}
    assert env["HOME"] == "/h"


def test_runtime_id_from_the_container() -> None:
    assert runtime_id(task("aaa"), "app", sandbox=False) == "aaa-0"
    bare = task("aaa")
    del bare["containers"][0]["runtimeId"]
    with pytest.raises(EcsExecError):
        runtime_id(bare, "app", sandbox=False)


def test_reason_goes_into_a_safe_user_agent_token() -> None:
    assert reason_user_agent("INC-42: disk full / check logs") == "bastionless-reason/INC-42_disk_full_check_logs"
    assert reason_user_agent("") == ""
