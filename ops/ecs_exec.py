"""ECS Exec: pick a task and container, check the prerequisites, open a shell over Session Manager.

Every prerequisite that ECS only reports as one opaque `InvalidParameterException` after the call
is checked here first on the `DescribeTasks` data, and each failure is one line naming the fix.
The decision functions are pure (they take API-shaped dicts) so `ops.doctor` reuses them.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import botocore.exceptions

from ops import aws
from ops import transport as transport_mod
from ops.config import EnvConfig
from ops.errors import AbortedError, OpsError
from ops.inputs import check_reason

Transport = Literal["auto", "native", "plugin"]
# (title, options) -> index of the chosen option; raises AbortedError when the user gives up.
Chooser = Callable[[str, Sequence[str]], int]

EXEC_AGENT = "ExecuteCommandAgent"
MIN_FARGATE_LINUX = (1, 4, 0)
MIN_FARGATE_WINDOWS = (1, 0, 0)


class EcsExecError(OpsError):
    """A task, container or prerequisite problem found before calling ExecuteCommand."""


@dataclass(frozen=True)
class TaskSummary:
    arn: str
    task_id: str
    started: datetime | None
    revision: str
    az: str
    status: str

    def label(self) -> str:
        started = self.started.strftime("%Y-%m-%d %H:%M:%S %Z").strip() if self.started else "not started"
        return f"{self.task_id}  started {started}  {self.revision}  {self.az or '-'}"


@dataclass(frozen=True)
class Target:
    """The chosen task and container, with what the transport needs."""

    cluster: str
    service: str
    task: dict[str, Any]
    container: str

    @property
    def task_arn(self) -> str:
        return str(self.task["taskArn"])

    @property
    def task_id(self) -> str:
        return task_id(self.task_arn)


# ---- pure decisions on API-shaped data ---------------------------------------------------------

def task_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


def summarize(task: Mapping[str, Any]) -> TaskSummary:
    td = str(task.get("taskDefinitionArn", ""))
    revision = td.rsplit("/", 1)[-1] if td else "-"
    started = task.get("startedAt")
    return TaskSummary(arn=str(task["taskArn"]), task_id=task_id(str(task["taskArn"])),
                       started=started if isinstance(started, datetime) else None, revision=revision,
                       az=str(task.get("availabilityZone", "")), status=str(task.get("lastStatus", "")))


def choose_task(tasks: Sequence[Mapping[str, Any]], *, service: str, interactive: bool,
                chooser: Chooser | None) -> dict[str, Any]:
    """One RUNNING task of the service: the only one, or the user's choice at a TTY, else --task."""
    running = [dict(t) for t in tasks if t.get("lastStatus") == "RUNNING"]
    if not running:
        raise EcsExecError(f"service {service} has no RUNNING task",
                           next_step=f"check the service's events: aws ecs describe-services --services {service}")
    if len(running) == 1:
        return running[0]
    # Newest first: the task most likely to have the latest task definition and exec settings.
    running.sort(key=_started_ts, reverse=True)
    labels = [summarize(t).label() for t in running]
    if not interactive or chooser is None:
        listing = "; ".join(labels)
        raise EcsExecError(f"service {service} has {len(running)} RUNNING tasks: {listing}",
                           next_step="pass --task <id> (not interactive, so no prompt)")
    return running[chooser(f"{len(running)} RUNNING tasks of {service}; choose one", labels)]


def _started_ts(task: Mapping[str, Any]) -> float:
    started = summarize(task).started
    return started.timestamp() if started else 0.0


def choose_container(task: Mapping[str, Any], *, container: str, default: str, interactive: bool,
                     chooser: Chooser | None) -> str:
    """The given container, the only one, the config's default, else ask (or require --container)."""
    names = [str(c.get("name")) for c in task.get("containers") or []]
    tid = task_id(str(task.get("taskArn", "")))
    if container:
        if container not in names:
            raise EcsExecError(f"task {tid} has no container {container!r} (it has: {', '.join(names) or 'none'})",
                               next_step="pass --container with one of those names")
        return container
    if len(names) == 1:
        return names[0]
    if default and default in names:
        return default
    if not names:
        raise EcsExecError(f"task {tid} reports no containers", next_step="wait until the task is RUNNING")
    if not interactive or chooser is None:
        raise EcsExecError(f"task {tid} has several containers ({', '.join(names)})",
                           next_step="pass --container NAME, or set [ecs] default_container in the env file")
    return names[chooser(f"task {tid} has {len(names)} containers; choose one", names)]


def parse_version(text: str) -> tuple[int, ...] | None:
    match = re.fullmatch(r"(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(p) for p in match.group(1).split(".")) if match else None


def enable_exec_fix(*, cluster: str, service: str) -> str:
    svc = service or "<service>"
    return (f"aws ecs update-service --cluster {cluster} --service {svc} --enable-execute-command "
            f"--force-new-deployment, then use a new task (the setting only applies to tasks started after it)")


def exec_enabled_problem(task: Mapping[str, Any], *, cluster: str, service: str) -> str | None:
    if task.get("enableExecuteCommand"):
        return None
    return (f"ECS Exec is not enabled on task {task_id(str(task.get('taskArn', '')))}; fix: "
            + enable_exec_fix(cluster=cluster, service=service))


def agent_problem(task: Mapping[str, Any], container: str) -> tuple[str, str] | None:
    """(severity, line) for the container's ExecuteCommandAgent, or None when it is RUNNING."""
    entry = next((c for c in task.get("containers") or [] if c.get("name") == container), None)
    tid = task_id(str(task.get("taskArn", "")))
    if entry is None:
        return "fail", f"task {tid} has no container {container!r}; fix: pass --container with an existing name"
    agent = next((a for a in entry.get("managedAgents") or [] if a.get("name") == EXEC_AGENT), None)
    if agent is None:
        return "fail", (f"container {container} of task {tid} has no {EXEC_AGENT}; fix: the task was started "
                        f"without ECS Exec: enable it on the service and force a new deployment")
    status = str(agent.get("lastStatus", ""))
    if status == "RUNNING":
        return None
    if status == "PENDING":
        return "fail", (f"the {EXEC_AGENT} of container {container} is still PENDING; fix: wait a minute "
                        f"and retry (it starts after the container)")
    reason = f" ({agent['reason']})" if agent.get("reason") else ""
    return "fail", (f"the {EXEC_AGENT} of container {container} is {status or 'UNKNOWN'}{reason}; fix: give the "
                    f"task role the ssmmessages:CreateControlChannel/CreateDataChannel/OpenControlChannel/"
                    f"OpenDataChannel permissions and a route to ssmmessages (endpoint or NAT), then start a new task")


def platform_problem(task: Mapping[str, Any]) -> str | None:
    """Fargate needs platform version 1.4.0+ (Linux) or 1.0.0+ (Windows); EC2 launch type has no such field."""
    launch = task.get("launchType")
    version = str(task.get("platformVersion") or "")
    if launch not in (None, "FARGATE") or not version or version == "LATEST":
        return None
    windows = "WINDOWS" in str(task.get("platformFamily", "")).upper()
    needed = MIN_FARGATE_WINDOWS if windows else MIN_FARGATE_LINUX
    parsed = parse_version(version)
    if parsed is not None and parsed >= needed:
        return None
    want = ".".join(map(str, needed))
    return (f"task {task_id(str(task.get('taskArn', '')))} runs on Fargate platform {version}, ECS Exec needs "
            f">= {want}; fix: set the service's platform_version to LATEST (or {want}+) and force a new deployment")


def preflight_problems(task: Mapping[str, Any], container: str, *, cluster: str, service: str) -> list[str]:
    problems: list[str] = []
    if task.get("lastStatus") != "RUNNING":
        problems.append(f"task {task_id(str(task.get('taskArn', '')))} is {task.get('lastStatus')}, not RUNNING; "
                        f"fix: choose a RUNNING task")
    exec_off = exec_enabled_problem(task, cluster=cluster, service=service)
    if exec_off:
        problems.append(exec_off)
    else:
        # With exec off the agent is absent by design; one line with the real fix is clearer than two.
        agent = agent_problem(task, container)
        if agent:
            problems.append(agent[1])
    platform = platform_problem(task)
    if platform:
        problems.append(platform)
    return problems


def service_of(task: Mapping[str, Any]) -> str:
    group = str(task.get("group", ""))
    return group.split(":", 1)[1] if group.startswith("service:") else ""


def runtime_id(task: Mapping[str, Any], container: str, *, sandbox: bool) -> str:
    entry: Mapping[str, Any] = next((c for c in task.get("containers") or [] if c.get("name") == container), {})
    rid = str(entry.get("runtimeId") or "")
    if rid:
        return rid
    if sandbox:
        # Sandbox tasks carry no runtime id; the local endpoint names its targets <task id>-<container>.
        return f"{task_id(str(task['taskArn']))}-{container}"
    raise EcsExecError(f"container {container} has no runtime id yet", next_step="wait until the task is RUNNING")


def plugin_invocation(*, plugin: str, session: Mapping[str, Any], region: str, profile: str, target: str,
                      endpoint_url: str, base_env: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
    """(argv, env) for the plugin as the AWS CLI builds them for `aws ecs execute-command`.

    ExecuteCommand answers in camelCase; the plugin reads the StartSession shape. The token goes in the
    environment only (ops.transport), never argv where `ps` shows it.
    """
    response = {"SessionId": session["sessionId"], "TokenValue": session["tokenValue"],
                "StreamUrl": session["streamUrl"]}
    return transport_mod.plugin_invocation(plugin=plugin, response=response, region=region, profile=profile,
                                           parameters={"Target": target}, endpoint_url=endpoint_url,
                                           base_env=base_env)


def reason_user_agent(reason: str) -> str:
    """ExecuteCommand has no Reason field; CloudTrail records the user agent, so the reason rides there."""
    cleaned = re.sub(r"[^A-Za-z0-9._~-]+", "_", reason.strip())[:120]
    return f"bastionless-reason/{cleaned}" if cleaned else ""


# ---- AWS calls ---------------------------------------------------------------------------------

def cluster_name(cfg: EnvConfig) -> str:
    if not cfg.ecs.enabled:
        raise EcsExecError(f"ECS is not enabled for {cfg.name}", next_step=(
            f"set [ecs] enabled = true in {cfg.source.name} and invoke deploy --env {cfg.name}"))
    return cfg.stack_name


def _api(what: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        raise EcsExecError(f"{what} failed: {err.get('Code', '')}: {err.get('Message', '')}".rstrip(": "),
                           next_step="check the names, your credentials and the region") from None


def describe_tasks(ecs: Any, *, cluster: str, arns: Sequence[str]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for start in range(0, len(arns), 100):
        batch = list(arns[start:start + 100])
        found += _api("DescribeTasks", lambda: ecs.describe_tasks(cluster=cluster, tasks=batch))["tasks"]  # noqa: B023
    return found


def pick_service(ecs: Any, cfg: EnvConfig, *, cluster: str, service: str, interactive: bool,
                 chooser: Chooser | None) -> str:
    if service:
        return service
    if cfg.ecs.sample_service:
        return f"{cfg.stack_name}-sample"
    arns: list[str] = _api("ListServices", lambda: ecs.list_services(cluster=cluster, maxResults=100))["serviceArns"]
    names = sorted(task_id(a) for a in arns)
    if len(names) == 1:
        return names[0]
    if not names:
        raise EcsExecError(f"cluster {cluster} has no services", next_step="pass --task <id>")
    if not interactive or chooser is None:
        raise EcsExecError(f"cluster {cluster} has several services ({', '.join(names)})",
                           next_step="pass --service NAME")
    return names[chooser(f"cluster {cluster} has {len(names)} services; choose one", names)]


def resolve_target(cfg: EnvConfig, *, ecs: Any, service: str = "", task: str = "", container: str = "",
                   interactive: bool, chooser: Chooser | None) -> Target:
    cluster = cluster_name(cfg)
    if task:
        tasks = describe_tasks(ecs, cluster=cluster, arns=[task])
        if not tasks:
            hint = f"invoke ecs-shell --env {cfg.name}" + (f" --service {service}" if service else "")
            raise EcsExecError(f"task {task} not found in cluster {cluster}", next_step=f"{hint} (lists the tasks)")
        chosen = tasks[0]
        service = service or service_of(chosen)
    else:
        service = pick_service(ecs, cfg, cluster=cluster, service=service, interactive=interactive, chooser=chooser)
        arns = _api("ListTasks", lambda: ecs.list_tasks(cluster=cluster, serviceName=service,
                                                          desiredStatus="RUNNING"))["taskArns"]
        chosen = choose_task(describe_tasks(ecs, cluster=cluster, arns=arns) if arns else [], service=service,
                             interactive=interactive, chooser=chooser)
    name = choose_container(chosen, container=container, default=cfg.ecs.default_container,
                            interactive=interactive, chooser=chooser)
    return Target(cluster=cluster, service=service, task=chosen, container=name)


def preflight(target: Target) -> None:
    problems = preflight_problems(target.task, target.container, cluster=target.cluster, service=target.service)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise EcsExecError(f"ECS Exec preflight failed for task {target.task_id}:\n{lines}")


_EXEC_HINTS = {
    "TargetNotConnectedException": "the task's agent is not connected: invoke doctor --env {env} (task role "
                                   "ssmmessages permissions, route to ssmmessages)",
    "AccessDeniedException": "assume the developer role (output developer_role_arn); invoke doctor --env {env}",
}


def execute_command(ecs: Any, target: Target, *, command: str, env: str = "") -> dict[str, Any]:
    try:
        result: dict[str, Any] = ecs.execute_command(cluster=target.cluster, task=target.task_arn,
                                                     container=target.container, command=command, interactive=True)
    except botocore.exceptions.ClientError as exc:
        err = exc.response.get("Error", {})
        code = str(err.get("Code", ""))
        hint = _EXEC_HINTS.get(code, "invoke doctor --env {env}").format(env=env or "<env>")
        raise EcsExecError(f"ExecuteCommand failed: {code}: {err.get('Message', '')}", next_step=hint) from None
    return result


def choose_transport(cfg: EnvConfig, transport: Transport) -> Literal["native", "plugin"]:
    if transport == "auto" and cfg.sandbox:
        # The local sandbox endpoint is ours, so the native client; in AWS the plugin when installed.
        return "native"
    return transport_mod.choose(transport)


@contextlib.contextmanager
def _ignore_sigint() -> Iterator[None]:
    """Ctrl-C belongs to the remote shell while the plugin runs (the AWS CLI does the same)."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


def usable_plugin(cfg: EnvConfig, transport: Transport) -> str | None:
    """The plugin to run, checked before ExecuteCommand opens a session; None for the native client."""
    if choose_transport(cfg, transport) != "plugin":
        return None
    plugin = transport_mod.plugin_path() or transport_mod.PLUGIN
    version = transport_mod.plugin_version(plugin)
    if not transport_mod.supports_env_handoff(version):
        raise transport_mod.old_plugin_error(version)
    return plugin


def hand_off(cfg: EnvConfig, target: Target, response: Mapping[str, Any], *, ecs: Any, plugin: str | None,
             stdin_fd: int | None, stdout_fd: int) -> int:
    """Relay the session until the remote command ends; the remote exit status (native) or the plugin's."""
    session = response["session"]
    tgt = f"ecs:{target.cluster}_{target.task_id}_{runtime_id(target.task, target.container, sandbox=cfg.sandbox)}"
    if plugin is not None:
        argv, env = plugin_invocation(plugin=plugin, session=session, region=cfg.region,
                                      profile=transport_mod.default_profile(cfg), target=tgt,
                                      endpoint_url=str(ecs.meta.endpoint_url),
                                      base_env=transport_mod.plugin_env(cfg, os.environ))
        with _ignore_sigint():
            return subprocess.run(argv, env=env, check=False).returncode
    from ops.ssm.client import run_shell

    return run_shell(stream_url=session["streamUrl"], token=session["tokenValue"], session_id=session["sessionId"],
                     stdin_fd=stdin_fd, stdout_fd=stdout_fd, target=tgt, kms_client=aws.client(cfg, "kms"),
                     ca_file=transport_mod.sandbox_ca_file(cfg))


def _pollable(fd: int | None) -> int | None:
    """stdin as the native client can watch it: a TTY, pipe or socket. /dev/null or a file means no input."""
    if fd is None:
        return None
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        return None
    return fd if os.isatty(fd) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) else None


def tty_chooser(title: str, options: Sequence[str]) -> int:
    """Numbered list on stderr, answer read from the terminal."""
    print(title, file=sys.stderr)
    for i, option in enumerate(options, 1):
        print(f"  {i}) {option}", file=sys.stderr)
    while True:
        try:
            answer = input(f"number [1-{len(options)}]: ").strip()
        except EOFError:
            raise AbortedError("no choice made") from None
        if answer.isdigit() and 1 <= int(answer) <= len(options):
            return int(answer) - 1
        print(f"type a number from 1 to {len(options)}", file=sys.stderr)


def ecs_shell(cfg: EnvConfig, *, service: str = "", task: str = "", container: str = "", command: str = "",
              reason: str = "", transport: Transport = "auto", interactive: bool | None = None,
              chooser: Chooser | None = tty_chooser, stdin_fd: int | None = 0, stdout_fd: int = 1,
              log: Callable[[str], None] | None = None) -> int:
    """Choose, preflight, ExecuteCommand, relay; returns the exit status of the remote command."""
    if transport not in ("auto", "native", "plugin"):
        raise OpsError(f"unknown transport {transport!r}", next_step="use --transport auto, native or plugin")
    if cfg.sandbox:
        aws.sandbox_endpoints()  # a clear "sandbox is not running" before any other error
    stdin_fd = _pollable(stdin_fd)
    if interactive is None:
        interactive = stdin_fd is not None and os.isatty(stdin_fd)
    agent = reason_user_agent(check_reason(reason))
    ecs = aws.client(cfg, "ecs", user_agent_extra=agent) if agent else aws.client(cfg, "ecs")
    target = resolve_target(cfg, ecs=ecs, service=service, task=task, container=container,
                            interactive=interactive, chooser=chooser)
    preflight(target)
    plugin = usable_plugin(cfg, transport)
    response = execute_command(ecs, target, command=command or cfg.ecs.shell_command, env=cfg.name)
    if log is not None:
        log(f"session {response['session']['sessionId']}: task {target.task_id} container {target.container}")
    return hand_off(cfg, target, response, ecs=ecs, plugin=plugin, stdin_fd=stdin_fd, stdout_fd=stdout_fd)


def run_command(cfg: EnvConfig, *, command: str, service: str = "", task: str = "", container: str = "",
                reason: str = "", stdout_fd: int = 1) -> int:
    """Non-interactive: run one command in the task (no stdin, no prompts) and return its exit status."""
    return ecs_shell(cfg, service=service, task=task, container=container, command=command, reason=reason,
                     transport="native", interactive=False, chooser=None, stdin_fd=None, stdout_fd=stdout_fd)
