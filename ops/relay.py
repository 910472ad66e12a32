"""Relay lifecycle for on-call: find it (in any state), restart it, replace it through Terraform.

`restart`: EC2 stop + start (or a reboot), then wait until the instance runs and its SSM agent is
Online again. `replace`: `terraform plan -replace=<the relay's address>` into a saved plan, shown and
confirmed, then applied, so the Terraform state stays the truth; then wait until the new relay is
Online. Both check the AWS account first and confirm (prod: type the environment name) unless `yes`.

Waiting shows a live line (state or ping status, seconds waited) on a terminal, and elsewhere a
timestamped line whenever the value changes (ops.console.Status), then one result line.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ops import aws, deploy, terraform
from ops.config import EnvConfig
from ops.console import Status, say
from ops.discovery import RelayNotReadyError, aws_call, relay_name
from ops.errors import OpsError
from ops.facts import ENV_TAG, RELAY_ROLE, ROLE_TAG

Ask = Callable[[str], str]
ONLINE_TIMEOUT = 600.0
STATE_TIMEOUT = 600.0
POLL_SECONDS = 5.0
_GONE = ("terminated", "shutting-down")


@dataclass(frozen=True)
class RelayInstance:
    instance_id: str
    state: str
    launch_time: str


@dataclass(frozen=True)
class RestartResult:
    instance_id: str
    ping_status: str
    seconds: float


@dataclass(frozen=True)
class ReplaceResult:
    old_instance_id: str
    new_instance_id: str
    ping_status: str
    seconds: float


def relay_instances(cfg: EnvConfig, *, include_gone: bool = False) -> list[RelayInstance]:
    """Every instance tagged as this env's relay, newest first (terminated ones only with `include_gone`)."""
    ec2 = aws.client(cfg, "ec2")
    filters = [{"Name": f"tag:{ENV_TAG}", "Values": [cfg.name]}, {"Name": f"tag:{ROLE_TAG}", "Values": [RELAY_ROLE]},
               {"Name": "tag:Name", "Values": [relay_name(cfg)]}]
    pages = aws_call(cfg, "ec2:DescribeInstances", lambda: ec2.describe_instances(Filters=filters))
    found = [RelayInstance(instance_id=str(i["InstanceId"]), state=str(i.get("State", {}).get("Name", "")),
                           launch_time=str(i.get("LaunchTime", "")))
             for r in pages.get("Reservations", []) for i in r.get("Instances", [])]
    if not include_gone:
        found = [i for i in found if i.state not in _GONE]
    return sorted(found, key=lambda i: i.launch_time, reverse=True)


def current_relay(cfg: EnvConfig) -> RelayInstance:
    """The env's relay in whatever state (not terminated): the newest one if there are several."""
    found = relay_instances(cfg)
    if not found:
        raise RelayNotReadyError(f"no relay instance found for {cfg.name} in {cfg.region} (tag Name={relay_name(cfg)})",
                                 next_step=f"invoke relay-replace --env {cfg.name} (creates it through Terraform)")
    return found[0]


def instance_state(cfg: EnvConfig, instance_id: str) -> str:
    ec2 = aws.client(cfg, "ec2")
    pages = aws_call(cfg, "ec2:DescribeInstances", lambda: ec2.describe_instances(InstanceIds=[instance_id]))
    for res in pages.get("Reservations", []):
        for inst in res.get("Instances", []):
            return str(inst.get("State", {}).get("Name", "unknown"))
    return "unknown"


def ping_status(cfg: EnvConfig, instance_id: str, *, after: float | None = None) -> str:
    """The SSM agent's PingStatus (Online, ConnectionLost, Inactive), or "not registered".

    `after` (epoch seconds): an Online whose last ping is older than that is reported as stale (right
    after a start, Systems Manager can still show the ping from before the stop).
    """
    ssm = aws.client(cfg, "ssm")
    info = aws_call(cfg, "ssm:DescribeInstanceInformation", lambda: ssm.describe_instance_information(
        Filters=[{"Key": "InstanceIds", "Values": [instance_id]}]))
    for item in info.get("InstanceInformationList", []):
        if item.get("InstanceId") == instance_id:
            status = str(item.get("PingStatus") or "unknown")
            last = item.get("LastPingDateTime")
            stamp = last.timestamp() if hasattr(last, "timestamp") else None
            if status == "Online" and after is not None and stamp is not None and stamp < after:
                return "Online (stale: last ping before the restart)"
            return status
    return "not registered"


def status_checks(cfg: EnvConfig, instance_id: str) -> str:
    """EC2's status checks, e.g. "system ok, instance impaired" (an impaired system check needs a stop + start)."""
    ec2 = aws.client(cfg, "ec2")
    found = aws_call(cfg, "ec2:DescribeInstanceStatus", lambda: ec2.describe_instance_status(
        InstanceIds=[instance_id], IncludeAllInstances=True)).get("InstanceStatuses", [])
    if not found:
        return "unknown"
    item = found[0]
    return (f"system {item.get('SystemStatus', {}).get('Status', 'unknown')}, "
            f"instance {item.get('InstanceStatus', {}).get('Status', 'unknown')}")


def wait_for(what: str, probe: Callable[[], str], done: Callable[[str], bool], *, timeout: float, out: TextIO,
             interval: float = POLL_SECONDS, fail: Callable[[str], bool] | None = None,
             fix: str = "") -> str:
    """Poll `probe` until `done(value)`, showing the value as it changes; OpsError after `timeout` seconds."""
    last = ""
    with Status(out, f"  waiting for {what}") as status:
        while True:
            value = probe()
            waited = status.elapsed
            if done(value):
                status.done(f"  {what}: {value} ({waited:.0f} s)")
                return value
            if fail is not None and fail(value):
                raise OpsError(f"{what}: {value}, which will not change by waiting", next_step=fix)
            if waited >= timeout:
                raise OpsError(f"{what}: still {value or last or 'unknown'} after {timeout:.0f} s", next_step=fix)
            status.update(f"{value} (at most {timeout:.0f} s)")
            last = value
            time.sleep(interval)


def wait_online(cfg: EnvConfig, instance_id: str, *, timeout: float = ONLINE_TIMEOUT, out: TextIO,
                interval: float = POLL_SECONDS, after: float | None = None) -> str:
    return wait_for(f"{instance_id} Online in Session Manager", lambda: ping_status(cfg, instance_id, after=after),
                    lambda v: v == "Online", timeout=timeout, out=out, interval=interval,
                    fix=f"invoke doctor --env {cfg.name} (agent, instance role, route to the ssm endpoints)")


def wait_state(cfg: EnvConfig, instance_id: str, state: str, *, timeout: float = STATE_TIMEOUT, out: TextIO,
               interval: float = POLL_SECONDS) -> str:
    return wait_for(f"{instance_id} {state}", lambda: instance_state(cfg, instance_id), lambda v: v == state,
                    timeout=timeout, out=out, interval=interval, fail=lambda v: v in _GONE,
                    fix=f"invoke relay-replace --env {cfg.name}")


@aws.runs_as("deployer")
def restart(cfg: EnvConfig, *, yes: bool = False, reboot: bool = False, ask: Ask = deploy.ask_terminal,
            timeout: float = ONLINE_TIMEOUT, interval: float = POLL_SECONDS, out: TextIO = sys.stderr) -> RestartResult:
    """Stop and start (or reboot) the relay, then wait until it runs and is Online in Session Manager."""
    ident = deploy.guard(cfg, out=out)
    relay = current_relay(cfg)
    iid = relay.instance_id
    ping = ping_status(cfg, iid) if relay.state == "running" else "-"
    checks = status_checks(cfg, iid) if relay.state == "running" else "-"
    say(out, f"relay {iid}: {relay.state}, Session Manager ping {ping}, status checks: {checks}")
    how = "Reboot" if reboot and relay.state == "running" else "Start" if relay.state == "stopped" else "Stop and start"
    if not yes:
        say(out, "open tunnels and shells through the relay will drop and reconnect (or need reopening)")
        deploy.confirm(cfg, action=f"{how} the relay {iid} of", account=ident["Account"], ask=ask,
                       what="relay restart")
    started = time.monotonic()
    requested = time.time()
    ec2 = aws.client(cfg, "ec2")
    if how == "Reboot":
        aws_call(cfg, "ec2:RebootInstances", lambda: ec2.reboot_instances(InstanceIds=[iid]))
        say(out, f"reboot of {iid} requested")
    else:
        if relay.state in ("running", "pending", "stopping"):
            if relay.state != "stopping":
                aws_call(cfg, "ec2:StopInstances", lambda: ec2.stop_instances(InstanceIds=[iid]))
                say(out, f"stopping {iid}")
            wait_state(cfg, iid, "stopped", timeout=timeout, out=out, interval=interval)
        # Systems Manager's view of the stopped relay (it may lag: an Online here is the ping from before).
        say(out, f"  Session Manager ping while stopped: {ping_status(cfg, iid)}")
        aws_call(cfg, "ec2:StartInstances", lambda: ec2.start_instances(InstanceIds=[iid]))
        say(out, f"starting {iid}")
        wait_state(cfg, iid, "running", timeout=timeout, out=out, interval=interval)
    ping = wait_online(cfg, iid, timeout=timeout, out=out, interval=interval, after=requested)
    return RestartResult(instance_id=iid, ping_status=ping, seconds=time.monotonic() - started)


def relay_address(workdir: Path) -> str:
    """The Terraform address of the relay instance in the synthesized stack (cdktf names it with a hash)."""
    try:
        config = json.loads((workdir / "cdk.tf.json").read_text())
    except (FileNotFoundError, ValueError) as exc:
        raise OpsError(f"cannot read the synthesized stack in {workdir} ({exc})", next_step="invoke synth --env X"
                       ) from None
    found = []
    for name, body in (config.get("resource", {}).get("aws_instance") or {}).items():
        tags = body.get("tags") or {}
        if tags.get(ROLE_TAG) == RELAY_ROLE:
            found.append(f"aws_instance.{name}")
    if len(found) != 1:
        raise OpsError(f"expected one relay aws_instance (tag {ROLE_TAG}={RELAY_ROLE}) in the stack, found "
                       f"{len(found)}", next_step="check stacks/relay.py")
    return found[0]


@aws.runs_as("deployer")
def replace(cfg: EnvConfig, *, yes: bool = False, ask: Ask = deploy.ask_terminal, timeout: float = ONLINE_TIMEOUT,
            interval: float = POLL_SECONDS, out: TextIO = sys.stderr, verbose: bool = False) -> ReplaceResult:
    """Replace the relay through Terraform (plan shown, confirmed, applied), then wait until the new one is Online.

    `verbose`: terraform's own plan and apply output instead of the summary (ops.terraform_view).
    """
    deploy.preflight(cfg)
    ident = deploy.guard(cfg, out=out)
    before = {i.instance_id for i in relay_instances(cfg)}
    tf = terraform.for_env(cfg, out=out, verbose=verbose)
    address = relay_address(tf.workdir)
    say(out, f"planning the replacement of {address} (relay {', '.join(sorted(before)) or 'missing'})")
    plan_path = deploy._plan_file(tf, "relay-replace.tfplan")
    started = time.monotonic()
    try:
        code = tf.plan(detailed_exitcode=True, out=plan_path, replace=[address])
        if code == 0:
            raise OpsError(f"terraform planned no change for {address}; nothing was replaced",
                           next_step=f"invoke plan --env {cfg.name}")
        if not yes:
            say(out, "open tunnels and shells through the relay will drop; reopen them once the new relay is Online")
            deploy.confirm(cfg, action=f"Replace the relay ({address}) of", account=ident["Account"], ask=ask,
                           what="relay replacement")
        tf.apply(plan_file=plan_path)
    finally:
        plan_path.unlink(missing_ok=True)
    new = [i for i in relay_instances(cfg) if i.instance_id not in before]
    if not new:
        raise OpsError("terraform applied, but no new relay instance appeared",
                       next_step=f"invoke doctor --env {cfg.name}")
    iid = new[0].instance_id
    say(out, f"new relay {iid} ({new[0].state}); old: {', '.join(sorted(before)) or 'none'}")
    wait_state(cfg, iid, "running", timeout=timeout, out=out, interval=interval)
    ping = wait_online(cfg, iid, timeout=timeout, out=out, interval=interval)
    return ReplaceResult(old_instance_id=",".join(sorted(before)), new_instance_id=iid, ping_status=ping,
                         seconds=time.monotonic() - started)


def describe(cfg: EnvConfig) -> dict[str, Any]:
    """For scripts and tests: the relay's id, state and ping."""
    relay = current_relay(cfg)
    return {"instance_id": relay.instance_id, "state": relay.state,
            "ping_status": ping_status(cfg, relay.instance_id) if relay.state == "running" else "-"}
