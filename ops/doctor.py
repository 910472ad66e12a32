"""`doctor`: the whole chain from this laptop to the database and the ECS tasks, one check per link.

Each check is pass / warn / fail and carries the fix. A check that cannot be evaluated is a warn
that says why, never a pass. Where the sandbox's AWS emulator lacks an API (IAM's policy simulator)
the sandbox degrades to such a warn, or to reading the role's policy documents when that is exact
enough; real AWS never takes that path silently.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import botocore.exceptions
from botocore.parsers import ResponseParserError

from ops import aws, facts
from ops.config import EnvConfig
from ops.ecs_exec import (
    EXEC_AGENT,
    agent_problem,
    enable_exec_fix,
    exec_enabled_problem,
    parse_version,
    platform_problem,
    task_id,
)
from ops.errors import OpsError
from ops.facts import PREFERENCES_DOCUMENT, partition
from ops.iam_policies import port_document_name

Status = Literal["pass", "warn", "fail"]

MIN_PLUGIN = (1, 2, 764, 0)
MIN_AGENT_REMOTE_HOST = tuple(int(p) for p in facts.MIN_AGENT_REMOTE_HOST.split("."))
MIN_NODE = (18,)
MIN_ECS_AGENT = (1, 50, 2)
# kms and logs too: our sessions are KMS-encrypted and shell sessions stream to CloudWatch Logs (stacks/network.py).
ENDPOINT_SERVICES = ("ssm", "ssmmessages", "ec2messages", "kms", "logs")
# Older agents still work: a warn, not a fail (ops.facts says which fixes the floor brings).
MIN_AGENT_SECURITY = tuple(int(p) for p in facts.MIN_AGENT_SECURITY.split("."))
# What the relay's role must allow for the agent to register and carry sessions (AmazonSSMManagedInstanceCore).
RELAY_AGENT_ACTIONS = ("ssm:UpdateInstanceInformation", "ssmmessages:CreateControlChannel",
                       "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel", "ec2messages:GetMessages")
CA_EXPIRY_WARN_DAYS = 60
SSMMESSAGES_ACTIONS = ("ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                       "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel")
SCP_NOTE = "organisation SCPs are not evaluated by the IAM policy simulator"
MAX_TASKS_PER_SERVICE = 5


@dataclass(frozen=True)
class CheckResult:
    section: str
    name: str
    status: Status
    detail: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


class _Unavailable(Exception):
    """The API is missing in this AWS (the sandbox emulator): the check cannot be made here."""


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _not_implemented(exc: Exception) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        code = _error_code(exc)
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code in ("NotImplemented", "NotImplementedError", "InternalFailure") or status == 501
    return False


def version_at_least(text: str, minimum: Sequence[int]) -> bool:
    parsed = parse_version(text)
    return parsed is not None and parsed >= tuple(minimum)


def _fmt(version: Sequence[int]) -> str:
    return ".".join(map(str, version))


# ---- pure helpers on API-shaped data ------------------------------------------------------------

def sg_allows(groups: Iterable[Mapping[str, Any]], *, port: int, source_groups: Sequence[str],
              source_ips: Sequence[str] = ()) -> bool:
    """Does any of these security groups admit TCP `port` from one of `source_groups` (or a CIDR with the IPs)?"""
    import ipaddress

    for group in groups:
        for perm in group.get("IpPermissions") or []:
            proto = str(perm.get("IpProtocol", ""))
            if proto not in ("tcp", "6", "-1"):
                continue
            if proto != "-1" and not int(perm.get("FromPort", -1)) <= port <= int(perm.get("ToPort", -1)):
                continue
            if any(pair.get("GroupId") in source_groups for pair in perm.get("UserIdGroupPairs") or []):
                return True
            for rng in perm.get("IpRanges") or []:
                net = ipaddress.ip_network(str(rng.get("CidrIp", "255.255.255.255/32")), strict=False)
                if any(ip and ipaddress.ip_address(ip) in net for ip in source_ips) and net.prefixlen > 0:
                    return True
    return False


def _action_matches(pattern: str, action: str) -> bool:
    return fnmatch.fnmatchcase(action.lower(), pattern.lower())


def statements_allow(documents: Iterable[Mapping[str, Any]], action: str) -> bool:
    """Static read of identity policies: an Allow for the action and no Deny (conditions not evaluated)."""
    allowed = False
    for doc in documents:
        statements = doc.get("Statement") or []
        if isinstance(statements, Mapping):
            statements = [statements]
        for st in statements:
            actions = st.get("Action") or []
            actions = [actions] if isinstance(actions, str) else list(actions)
            if not any(_action_matches(str(a), action) for a in actions):
                continue
            if st.get("Effect") == "Deny":
                return False
            if st.get("Effect") == "Allow":
                allowed = True
    return allowed


def simulation_decisions(response: Mapping[str, Any]) -> dict[str, str]:
    """action -> decision from SimulatePrincipalPolicy; with several resources, every one must be allowed."""
    decisions: dict[str, str] = {}
    for res in response.get("EvaluationResults", []):
        per_resource = [str(r.get("EvalResourceDecision")) for r in res.get("ResourceSpecificResults") or []]
        denied = [d for d in per_resource if d != "allowed"]
        decisions[str(res["EvalActionName"])] = denied[0] if denied else str(res.get("EvalDecision", ""))
    return decisions


def principal_for_simulation(arn: str) -> str | None:
    """The IAM ARN the simulator accepts: an assumed role maps to its role; root cannot be simulated."""
    m = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):assumed-role/([^/]+)/.+$", arn)
    if m:
        return f"arn:{m.group(1)}:iam::{m.group(2)}:role/{m.group(3)}"
    if arn.endswith(":root"):
        return None
    m = re.match(r"^arn:(aws[a-z-]*):sts::(\d{12}):(user|role)/(.+)$", arn)
    if m:  # the sandbox emulator reports IAM users under sts
        return f"arn:{m.group(1)}:iam::{m.group(2)}:{m.group(3)}/{m.group(4)}"
    return arn


# ---- the checks ---------------------------------------------------------------------------------

@dataclass
class _Doctor:
    cfg: EnvConfig
    results: list[CheckResult] = field(default_factory=list)
    _clients: dict[str, Any] = field(default_factory=dict)
    identity: dict[str, str] | None = None
    relay: dict[str, Any] | None = None
    simulator_missing: bool = False

    # ---- plumbing ----
    def client(self, service: str) -> Any:
        if service not in self._clients:
            self._clients[service] = aws.client(self.cfg, service)
        return self._clients[service]

    def arn(self, service: str, resource: str, *, account: str | None = None) -> str:
        acct = self.cfg.account_id if account is None else account
        return f"arn:{partition(self.cfg.region)}:{service}:{self.cfg.region}:{acct}:{resource}"

    def add(self, section: str, name: str, status: Status, detail: str, fix: str = "") -> None:
        self.results.append(CheckResult(section, name, status, detail, fix))

    def unavailable(self, section: str, name: str, api: str) -> None:
        if self.cfg.sandbox:
            self.add(section, name, "warn", f"not checkable here: the sandbox's AWS emulator (moto) does not "
                     f"implement {api}", "nothing to fix in the sandbox; run doctor against a real environment")
        else:
            self.add(section, name, "warn", f"not checked: {api} is not available", f"allow {api} to check this")

    def section(self, name: str, body: Callable[[], None]) -> None:
        """Run one section; an unexpected API error becomes one fail naming the call, not a traceback."""
        try:
            body()
        except botocore.exceptions.ClientError as exc:
            op = exc.operation_name
            err = exc.response.get("Error", {})
            self.add(name, f"{name} checks", "fail", f"{op} failed: {_error_code(exc)}: {err.get('Message', '')}",
                     f"allow {op} for your role, or check the region {self.cfg.region}")
        except (botocore.exceptions.BotoCoreError, ResponseParserError, OpsError) as exc:
            self.add(name, f"{name} checks", "fail", f"could not check: {exc}",
                     getattr(exc, "next_step", "") or "check your network and credentials")

    def skip(self, section: str, name: str, because: str) -> None:
        self.add(section, name, "warn", f"not checked: {because}", "fix the failing check above first")

    # ---- local ----
    def local(self) -> None:
        from ops.errors import ToolMissingError
        from ops.terraform import terraform_binary, terraform_version

        try:
            self.add("local", "terraform", "pass", f"{terraform_version()} at {terraform_binary()}")
        except ToolMissingError as exc:
            self.add("local", "terraform", "warn", f"{exc} (needed for validate/plan/deploy, not for sessions)",
                     "install Terraform >= 1.10 from https://developer.hashicorp.com/terraform/install")
        node = shutil.which("node")
        version = _run_version([node, "--version"]) if node else ""
        if not node:
            self.add("local", "node", "warn", "Node.js not on PATH (cdktf synth needs it; sessions do not)",
                     "./dev installs one, or install Node.js 18+")
        elif not version_at_least(version.lstrip("v").split(".")[0], MIN_NODE):
            self.add("local", "node", "warn", f"Node.js {version} is older than 18", "install Node.js 18+")
        else:
            self.add("local", "node", "pass", f"{version} at {node}")
        plugin = shutil.which("session-manager-plugin")
        native = _native_available()
        if plugin:
            pv = _run_version([plugin, "--version"])
            if version_at_least(pv, MIN_PLUGIN):
                self.add("local", "session transport", "pass", f"session-manager-plugin {pv}"
                         + (" and the native client" if native else ""))
            else:
                self.add("local", "session transport", "warn",
                         f"session-manager-plugin {pv or '(unknown version)'} is older than {_fmt(MIN_PLUGIN)}",
                         "update the plugin, or use --transport native")
        elif native:
            self.add("local", "session transport", "pass",
                     "native client (session-manager-plugin not installed; it is optional)")
        else:
            self.add("local", "session transport", "fail", "neither session-manager-plugin nor the native client",
                     "install the Session Manager plugin, or reinstall bastionless with its dependencies")

    # ---- credentials ----
    def credentials(self) -> None:
        try:
            ident = aws.caller_identity(self.cfg)
        except OpsError as exc:
            self.add("credentials", "credentials", "fail", exc.message, exc.next_step)
            return
        self.add("credentials", "credentials", "pass", ident["Arn"])
        if ident["Account"] != self.cfg.account_id:
            self.add("credentials", "account", "fail",
                     f"credentials are for account {ident['Account']}, {self.cfg.source.name} is {self.cfg.account_id}",
                     f"switch to credentials for account {self.cfg.account_id} (export AWS_PROFILE=...)")
        else:
            self.identity = ident
            self.add("credentials", "account", "pass", f"{ident['Account']} matches {self.cfg.source.name}")
        other = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or ""
        if other and other != self.cfg.region:
            self.add("credentials", "region", "warn",
                     f"bastionless uses {self.cfg.region} (env file) but AWS_REGION/AWS_DEFAULT_REGION is {other}",
                     f"export AWS_REGION={self.cfg.region} so the AWS CLI and plugin agree")
        else:
            self.add("credentials", "region", "pass", f"{self.cfg.region} (from {self.cfg.source.name})")

    # ---- relay ----
    def relay_checks(self) -> None:
        ec2 = self.client("ec2")
        found = ec2.describe_instances(Filters=[
            {"Name": f"tag:{facts.ENV_TAG}", "Values": [self.cfg.name]},
            {"Name": f"tag:{facts.ROLE_TAG}", "Values": [facts.RELAY_ROLE]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]},
        ])
        instances = [i for r in found.get("Reservations", []) for i in r.get("Instances", [])]
        if not instances:
            self.add("relay", "relay instance", "fail", f"no relay instance tagged bastionless:env={self.cfg.name}",
                     f"invoke deploy --env {self.cfg.name}")
            return
        relay = instances[0]
        self.relay = relay
        rid = relay["InstanceId"]
        extra = f" ({len(instances)} found; using the first)" if len(instances) > 1 else ""
        self.add("relay", "relay instance", "warn" if extra else "pass", f"{rid}{extra}",
                 "terminate the extra relays (only one should carry the tags)" if extra else "")
        state = relay.get("State", {}).get("Name", "")
        if state != "running":
            self.add("relay", "relay running", "fail", f"{rid} is {state}",
                     f"aws ec2 start-instances --instance-ids {rid} --region {self.cfg.region}")
            # Offline follows from stopped: one fail with the one fix, not two.
            self.skip("relay", "relay SSM ping", f"the relay is {state}")
            self.skip("relay", "relay agent version", f"the relay is {state}")
            return
        self.add("relay", "relay running", "pass", f"{rid} is running")
        statuses = self.client("ec2").describe_instance_status(
            InstanceIds=[rid], IncludeAllInstances=True).get("InstanceStatuses", [])
        item = statuses[0] if statuses else {}
        self.add("relay", "relay status checks", *status_check_verdict(
            self.cfg, item.get("SystemStatus", {}).get("Status", "unknown"),
            item.get("InstanceStatus", {}).get("Status", "unknown")))
        infos = self.client("ssm").describe_instance_information(
            Filters=[{"Key": "InstanceIds", "Values": [rid]}]).get("InstanceInformationList", [])
        info = infos[0] if infos else {}
        ping = info.get("PingStatus", "not registered")
        if ping == "Online":
            self.add("relay", "relay SSM ping", "pass", "Online")
        else:
            self.add("relay", "relay SSM ping", "fail", f"{rid} is {ping} in Systems Manager",
                     "check the relay's route to Systems Manager (network checks) and that its role has "
                     "AmazonSSMManagedInstanceCore; then aws ec2 reboot-instances --instance-ids " + rid)
        version = str(info.get("AgentVersion", ""))
        if not info:
            self.skip("relay", "relay agent version", "the relay is not registered with Systems Manager")
        elif version_at_least(version, MIN_AGENT_REMOTE_HOST):
            self.add("relay", "relay agent version", "pass", f"{version} (remote-host forwarding needs "
                     f"{_fmt(MIN_AGENT_REMOTE_HOST)})")
        else:
            self.add("relay", "relay agent version", "fail",
                     f"{version or 'unknown'} is older than {_fmt(MIN_AGENT_REMOTE_HOST)} (remote-host forwarding)",
                     f"aws ssm send-command --document-name AWS-UpdateSSMAgent --instance-ids {rid}")
        if info and version_at_least(version, MIN_AGENT_REMOTE_HOST):
            if version_at_least(version, MIN_AGENT_SECURITY):
                self.add("relay", "relay agent security fixes", "pass", f"{version} >= {_fmt(MIN_AGENT_SECURITY)}")
            else:
                self.add("relay", "relay agent security fixes", "warn",
                         f"{version} is older than {_fmt(MIN_AGENT_SECURITY)}, which has security fixes",
                         f"invoke runbook relay-patching (aws ssm send-command --document-name AWS-UpdateSSMAgent "
                         f"--instance-ids {rid} --region {self.cfg.region})")
        self._patch_state(rid)

    def _patch_state(self, rid: str) -> None:
        name = "relay patches"
        if not self.cfg.patching.enabled:
            self.add("relay", name, "warn", f"not checked: patching is off in {self.cfg.source.name} "
                     "([patching] enabled = false)", "set enabled = true and invoke deploy, unless the relay is "
                     "kept current another way (replaced onto new AMIs)")
            return
        try:
            states = self.client("ssm").describe_instance_patch_states(InstanceIds=[rid]).get(
                "InstancePatchStates", [])
        except botocore.exceptions.ClientError as exc:
            # moto 5.2.5 answers this action it lacks with an HTML 500 page.
            emulator_gap = self.cfg.sandbox and exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 500
            if not (_not_implemented(exc) or emulator_gap):
                raise
            self.unavailable("relay", name, "DescribeInstancePatchStates")
            return
        except ResponseParserError:  # an emulator without the action answers with a page botocore cannot parse
            self.unavailable("relay", name, "DescribeInstancePatchStates")
            return
        fix = "invoke runbook relay-patching (install now, outside the weekly window)"
        if not states:
            self.add("relay", name, "warn", f"{rid} has no patch scan yet (the daily scan association reports it)",
                     fix)
            return
        st = states[0]
        missing, failed = int(st.get("MissingCount", 0)), int(st.get("FailedCount", 0))
        pending = int(st.get("InstalledPendingRebootCount", 0))
        when = st.get("OperationEndTime", "")
        detail = (f"missing {missing}, failed {failed}, pending reboot {pending} "
                  f"(last {st.get('Operation', '?')} {when})")
        self.add("relay", name, "fail" if failed or missing else ("warn" if pending else "pass"), detail,
                 fix if failed or missing or pending else "")

    def relay_egress(self) -> None:
        """The relay's security groups must let it reach Systems Manager (443) and the database."""
        if self.relay is None:
            self.skip("relay", "relay SG egress", "no relay instance")
            return
        group_ids = self.relay_groups()
        groups = self.client("ec2").describe_security_groups(GroupIds=group_ids)["SecurityGroups"] if group_ids else []
        rules = [p for g in groups for p in g.get("IpPermissionsEgress", [])]

        def opens(port: int) -> bool:
            return any(r.get("IpProtocol") in ("-1", "tcp") and (r.get("IpProtocol") == "-1" or
                       int(r.get("FromPort", 0)) <= port <= int(r.get("ToPort", 65535))) for r in rules)

        missing = [str(p) for p in (443, self.cfg.database.port) if not opens(p)]
        if missing:
            self.add("relay", "relay SG egress", "fail", f"{', '.join(group_ids) or 'no group'} allows no outbound "
                     f"TCP {' or '.join(missing)} (443: Systems Manager; {self.cfg.database.port}: the database)",
                     f"invoke deploy --env {self.cfg.name} (restores the relay's egress rules)")
        else:
            self.add("relay", "relay SG egress", "pass", f"443 and {self.cfg.database.port} out from "
                     f"{', '.join(group_ids)}")

    def relay_profile(self) -> None:
        if self.relay is None:
            self.skip("relay", "relay instance profile", "no relay instance")
            return
        role = self._relay_role()
        fix = (f"invoke deploy --env {self.cfg.name} (re-attaches the instance profile and "
               "AmazonSSMManagedInstanceCore), then invoke relay-restart")
        if role is None:
            self.add("relay", "relay instance profile", "fail", f"{self.relay['InstanceId']} has no instance profile "
                     "with a role: its agent cannot register with Systems Manager", fix)
            return
        self._role_may(section="relay", name="relay instance profile", role=role, actions=RELAY_AGENT_ACTIONS,
                       resources=["*"], fix=fix)

    def relay_groups(self) -> list[str]:
        """The relay's security groups: the instance's, plus those of its network interfaces (an instance
        launched with an interface spec reports them there; the sandbox emulator only there)."""
        relay = self.relay or {}
        groups = [g["GroupId"] for g in relay.get("SecurityGroups", [])]
        groups += [g["GroupId"] for eni in relay.get("NetworkInterfaces", []) for g in eni.get("Groups", [])]
        return list(dict.fromkeys(groups))

    # ---- network ----
    def network(self) -> None:
        if self.relay is None:
            self.skip("network", "egress", "no relay instance to find the VPC from")
            return
        vpc = self.relay.get("VpcId", "")
        self._vpc_dns(vpc)
        if self.cfg.network.egress == "endpoints":
            self._endpoints(vpc)
        else:
            self._nat(vpc, self.relay.get("SubnetId", ""))

    def _vpc_dns(self, vpc: str) -> None:
        """Interface endpoints' private DNS (and RDS host names) need both VPC DNS attributes on."""
        ec2 = self.client("ec2")
        off = [attr for attr, key in (("enableDnsSupport", "EnableDnsSupport"),
                                      ("enableDnsHostnames", "EnableDnsHostnames"))
               if not ec2.describe_vpc_attribute(VpcId=vpc, Attribute=attr).get(key, {}).get("Value")]
        if off:
            flags = " ".join(f"--{'enable-dns-support' if a == 'enableDnsSupport' else 'enable-dns-hostnames'}"
                             for a in off)
            self.add("network", "VPC DNS", "fail", f"{vpc} has {', '.join(off)} off: the endpoints' private DNS "
                     "names do not resolve, so the agent reaches for the public ones",
                     f"invoke deploy --env {self.cfg.name} (or aws ec2 modify-vpc-attribute --vpc-id {vpc} {flags}"
                     f" --region {self.cfg.region}, one attribute per call)")
        else:
            self.add("network", "VPC DNS", "pass", f"{vpc}: DNS support and host names on")

    def _endpoints(self, vpc: str) -> None:
        ec2 = self.client("ec2")
        eps = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}]).get("VpcEndpoints", [])
        relay_sgs = self.relay_groups()
        relay_ip = str((self.relay or {}).get("PrivateIpAddress", ""))
        deploy = f"invoke deploy --env {self.cfg.name} (recreates the endpoint)"
        for svc in ENDPOINT_SERVICES:
            name = f"com.amazonaws.{self.cfg.region}.{svc}"
            live = [e for e in eps if e.get("ServiceName") == name
                    and str(e.get("State", "")).lower() not in ("deleted", "deleting", "failed", "rejected")]
            check = f"endpoint {svc}"
            if not live:
                self.add("network", check, "fail", f"no {name} interface endpoint in {vpc}", deploy)
                continue
            ep = live[0]
            if ep.get("VpcEndpointType", "Interface") != "Interface":
                self.add("network", check, "fail", f"{ep['VpcEndpointId']} is {ep.get('VpcEndpointType')}, "
                         "not Interface", deploy)
            elif not ep.get("PrivateDnsEnabled"):
                self.add("network", check, "fail", f"{ep['VpcEndpointId']} has private DNS off, so the relay "
                         f"resolves {svc}.{self.cfg.region}.amazonaws.com to the public address",
                         f"aws ec2 modify-vpc-endpoint --vpc-endpoint-id {ep['VpcEndpointId']} --private-dns-enabled")
            else:
                group_ids = [g["GroupId"] for g in ep.get("Groups", [])]
                groups = ec2.describe_security_groups(GroupIds=group_ids)["SecurityGroups"] if group_ids else []
                if sg_allows(groups, port=443, source_groups=relay_sgs, source_ips=[relay_ip]):
                    self.add("network", check, "pass", f"{ep['VpcEndpointId']}, private DNS, 443 from the relay")
                else:
                    self.add("network", check, "fail", f"the security groups of {ep['VpcEndpointId']} "
                             f"({', '.join(group_ids) or 'none'}) do not allow 443 from the relay",
                             f"allow TCP 443 from {', '.join(relay_sgs) or 'the relay SG'} "
                             f"(invoke deploy --env {self.cfg.name} restores the rule)")

    def _nat(self, vpc: str, subnet: str) -> None:
        ec2 = self.client("ec2")
        tables = ec2.describe_route_tables(
            Filters=[{"Name": "association.subnet-id", "Values": [subnet]}]).get("RouteTables", [])
        if not tables:
            tables = ec2.describe_route_tables(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                        {"Name": "association.main", "Values": ["true"]}]
                                               ).get("RouteTables", [])
        routes = [r for t in tables for r in t.get("Routes", []) if r.get("DestinationCidrBlock") == "0.0.0.0/0"]
        out = next((r for r in routes if (r.get("NatGatewayId") or r.get("GatewayId", "").startswith("igw-"))
                    and r.get("State", "active") == "active"), None)
        if out is None:
            self.add("network", "route out", "fail", f"subnet {subnet} has no active 0.0.0.0/0 route to a NAT gateway",
                     f"invoke deploy --env {self.cfg.name} (recreates the NAT route)")
        else:
            self.add("network", "route out", "pass", f"0.0.0.0/0 via {out.get('NatGatewayId') or out['GatewayId']}")

    # ---- database ----
    def database(self) -> None:
        rds = self.client("rds")
        ident = self.cfg.stack_name
        try:
            db = rds.describe_db_instances(DBInstanceIdentifier=ident)["DBInstances"][0]
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "DBInstanceNotFound":
                raise
            self.add("database", "database instance", "fail", f"no RDS instance {ident}",
                     f"invoke deploy --env {self.cfg.name}")
            return
        status = db.get("DBInstanceStatus", "")
        if status == "available":
            self.add("database", "database instance", "pass", f"{ident} is available")
        else:
            self.add("database", "database instance", "fail", f"{ident} is {status}", self._status_fix(db, status))
        self._ca(db)
        port = int(db.get("Endpoint", {}).get("Port") or self.cfg.database.port)
        sg_ids = [g["VpcSecurityGroupId"] for g in db.get("VpcSecurityGroups", [])]
        relay_sgs = self.relay_groups()
        if not relay_sgs:
            self.skip("database", f"database SG {port} from relay",
                      "no relay instance" if self.relay is None else "the relay reports no security group")
        else:
            groups = self.client("ec2").describe_security_groups(GroupIds=sg_ids)["SecurityGroups"] if sg_ids else []
            if sg_allows(groups, port=port, source_groups=relay_sgs):
                self.add("database", f"database SG {port} from relay", "pass",
                         f"{', '.join(sg_ids)} allows {port} from {', '.join(relay_sgs)}")
            else:
                self.add("database", f"database SG {port} from relay", "fail",
                         f"{', '.join(sg_ids) or 'no security group'} does not allow TCP {port} from the relay SG "
                         f"({', '.join(relay_sgs)})",
                         f"aws ec2 authorize-security-group-ingress --group-id {sg_ids[0] if sg_ids else '<db sg>'} "
                         f"--protocol tcp --port {port} --source-group {relay_sgs[0]} "
                         f"(or invoke deploy --env {self.cfg.name})")
        self._secret(db)

    def _status_fix(self, db: Mapping[str, Any], status: str) -> str:
        ident = db.get("DBInstanceIdentifier", self.cfg.stack_name)
        region = f"--region {self.cfg.region}"
        if status == "stopped":
            return f"aws rds start-db-instance --db-instance-identifier {ident} {region}"
        if status == "storage-full":
            # RDS frees nothing by itself: waiting never helps. Grow it now (at least 10 %).
            grow = max(int(db.get("AllocatedStorage") or self.cfg.database.allocated_storage_gb) * 5 // 4,
                       int(db.get("AllocatedStorage") or 0) + 10)
            return (f"aws rds modify-db-instance --db-instance-identifier {ident} --allocated-storage {grow} "
                    f"--apply-immediately {region}; then raise [database] max_allocated_storage_gb "
                    f"(invoke runbook database-unhealthy)")
        return ("wait until it is available (aws rds wait db-instance-available --db-instance-identifier "
                f"{ident} {region})")

    def _ca(self, db: Mapping[str, Any]) -> None:
        ca = str(db.get("CACertificateIdentifier", ""))
        wanted = self.cfg.database.ca_cert_identifier
        ident = db.get("DBInstanceIdentifier", self.cfg.stack_name)
        if ca != wanted:
            self.add("database", "database CA", "fail", f"{ident} uses CA {ca or 'unknown'}; "
                     f"{self.cfg.source.name} pins {wanted}",
                     f"invoke deploy --env {self.cfg.name} (applies in the maintenance window; clients need "
                     f"the RDS global bundle: certs/README.md)")
            return
        valid_till = (db.get("CertificateDetails") or {}).get("ValidTill")
        if valid_till is None:
            try:
                certs = self.client("rds").describe_certificates(CertificateIdentifier=ca).get("Certificates", [])
            except botocore.exceptions.ClientError as exc:
                if not _not_implemented(exc):
                    raise
                certs = []
            except ResponseParserError:  # moto 5.2.5 lacks DescribeCertificates
                certs = []
            valid_till = certs[0].get("ValidTill") if certs else None
        if valid_till is None:
            where = ("the sandbox's AWS emulator (moto) reports no certificate expiry" if self.cfg.sandbox
                     else "RDS reported no expiry")
            self.add("database", "database CA", "warn", f"{ca}, as {self.cfg.source.name} pins; {where}",
                     "nothing to fix in the sandbox" if self.cfg.sandbox
                     else "check the certificate's expiry in the RDS console")
            return
        import datetime

        left = (valid_till - datetime.datetime.now(tz=valid_till.tzinfo)).days
        status: Status = "pass" if left > CA_EXPIRY_WARN_DAYS else "warn"
        self.add("database", "database CA", status, f"{ca}, server certificate valid until "
                 f"{valid_till:%Y-%m-%d} ({left} days)",
                 "" if status == "pass" else "rotate before then: invoke runbook database-unhealthy (step 6)")

    def _secret(self, db: Mapping[str, Any]) -> None:
        arn = str((db.get("MasterUserSecret") or {}).get("SecretArn", ""))
        ident = db.get("DBInstanceIdentifier", self.cfg.stack_name)
        regen = (f"aws rds modify-db-instance --db-instance-identifier {ident} --manage-master-user-password "
                 f"--apply-immediately (RDS recreates the managed secret)")
        if not arn:
            self.add("database", "database secret", "fail", f"{ident} has no RDS-managed master secret", regen)
            return
        try:
            value = self.client("secretsmanager").get_secret_value(SecretId=arn)
        except botocore.exceptions.ClientError as exc:
            code = _error_code(exc)
            if code in ("ResourceNotFoundException", "InvalidRequestException"):
                self.add("database", "database secret", "fail", f"secret {arn} is deleted or scheduled for deletion "
                         f"({code})", f"aws secretsmanager restore-secret --secret-id {arn}, or {regen}")
            elif code in ("AccessDeniedException", "AccessDenied") and self.cfg.people:
                # Per-person DB identities: only the break-glass role reads the master secret, by design.
                self.add("database", "database secret", "pass",
                         f"not readable by you ({code}), as intended: people log in as themselves through the auth "
                         f"proxy; only {self.cfg.stack_name}-break-glass reads it")
            elif code in ("AccessDeniedException", "AccessDenied"):
                self.add("database", "database secret", "fail", f"you may not read secret {arn} ({code})",
                         "allow secretsmanager:GetSecretValue on it and kms:Decrypt on its key (the break-glass "
                         "role has both)")
            else:
                raise
            return
        try:
            data = json.loads(value.get("SecretString") or "")
        except ValueError:
            data = None
        # Only key names are reported: the secret's values must never reach output.
        missing = [k for k in ("username", "password") if not isinstance(data, dict) or not data.get(k)]
        if missing:
            self.add("database", "database secret", "fail", f"secret {arn} is not JSON with a username and a "
                     f"password (missing: {', '.join(missing)})",
                     f"aws secretsmanager rotate-secret --secret-id {arn} (RDS rewrites it), or {regen}")
        else:
            self.add("database", "database secret", "pass", "readable; JSON has username and password")

    # ---- IAM ----
    def simulate(self, principal: str, actions: Sequence[str], resources: Sequence[str] = (),
                 context: Mapping[str, str] | None = None) -> dict[str, str]:
        """action -> decision. Raises _Unavailable where the simulator does not exist (the sandbox).

        `context` supplies the condition keys a real request carries (e.g. ecs:cluster), which the
        simulator otherwise treats as absent, turning a correct policy into a false deny.
        """
        if self.simulator_missing:
            raise _Unavailable
        kwargs: dict[str, Any] = {"PolicySourceArn": principal, "ActionNames": list(actions)}
        if resources:
            kwargs["ResourceArns"] = list(resources)
        if context:
            kwargs["ContextEntries"] = [{"ContextKeyName": k, "ContextKeyValues": [v], "ContextKeyType": "string"}
                                        for k, v in context.items()]
        try:
            out = self.client("iam").simulate_principal_policy(**kwargs)
        except botocore.exceptions.ClientError as exc:
            if _not_implemented(exc):
                self.simulator_missing = True
                raise _Unavailable from None
            raise
        except ResponseParserError:
            # moto's server answers an unimplemented action with an HTML 500 page.
            if self.cfg.sandbox:
                self.simulator_missing = True
                raise _Unavailable from None
            raise
        return simulation_decisions(out)

    def iam(self) -> None:
        if self.identity is None:
            self.skip("iam", "ssm:StartSession", "credentials or account check failed")
            return
        principal = principal_for_simulation(self.identity["Arn"])
        if principal is None:
            self.add("iam", "ssm:StartSession", "warn", "you are the account root user, which IAM does not restrict",
                     f"use the developer role {self.cfg.stack_name}-developer instead of root")
            return
        checks: list[tuple[str, list[str], list[str], dict[str, str]]] = []
        if self.relay is not None:
            relay_arn = self.arn("ec2", f"instance/{self.relay['InstanceId']}")
            # The env's own document (host and port fixed to the database), not the generic one.
            doc_arn = self.arn("ssm", f"document/{port_document_name(self.cfg.stack_name)}")
            checks.append(("ssm:StartSession", ["ssm:StartSession"], [relay_arn, doc_arn], {}))
        else:
            self.skip("iam", "ssm:StartSession", "no relay instance")
        if self.cfg.ecs.enabled:
            task_arn = self.arn("ecs", f"task/{self.cfg.stack_name}/*")
            cluster_arn = self.arn("ecs", f"cluster/{self.cfg.stack_name}")
            checks.append(("ecs:ExecuteCommand", ["ecs:ExecuteCommand"], [task_arn], {"ecs:cluster": cluster_arn}))
        for name, actions, resources, context in checks:
            try:
                decision = self.simulate(principal, actions, resources, context)[actions[0]]
            except _Unavailable:
                self.unavailable("iam", name, "iam:SimulatePrincipalPolicy")
                continue
            except botocore.exceptions.ClientError as exc:
                self.add("iam", name, "warn", f"could not simulate ({_error_code(exc)}); {SCP_NOTE}",
                         "allow iam:SimulatePrincipalPolicy on your role to check this")
                continue
            if decision == "allowed":
                self.add("iam", name, "pass", f"allowed for {principal} on {', '.join(resources)} ({SCP_NOTE})")
            else:
                self.add("iam", name, "fail", f"{decision} for {principal} on {', '.join(resources)} ({SCP_NOTE})",
                         f"assume the developer role {self.cfg.stack_name}-developer "
                         f"(output developer_role_arn), or add your principal to access.developer_principals")

    # ---- KMS ----
    def kms(self) -> None:
        kms = self.client("kms")
        alias = f"alias/{self.cfg.stack_name}-sessions"
        try:
            meta = kms.describe_key(KeyId=alias)["KeyMetadata"]
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "NotFoundException":
                raise
            self.add("kms", "session key", "fail", f"no KMS key {alias}", f"invoke deploy --env {self.cfg.name}")
            return
        state = meta.get("KeyState", "")
        key_id = meta["KeyId"]
        if state == "Enabled":
            self.add("kms", "session key", "pass", f"{alias} ({key_id}) is enabled")
        elif state == "PendingDeletion":
            self.add("kms", "session key", "fail", f"{alias} is scheduled for deletion",
                     f"aws kms cancel-key-deletion --key-id {key_id} && aws kms enable-key --key-id {key_id}")
        else:
            self.add("kms", "session key", "fail", f"{alias} is {state}", f"aws kms enable-key --key-id {key_id}")
        self._preferences_match(str(meta.get("Arn", "")))
        prefs_key = self._preferences_key()
        if not prefs_key:
            self.add("kms", "session encryption", "pass",
                     f"{PREFERENCES_DOCUMENT} names no KMS key: sessions use TLS only, nothing to check")
            return
        try:
            kms.generate_data_key(KeyId=prefs_key, NumberOfBytes=64,
                                  EncryptionContext={"aws:ssm:SessionId": "doctor", "aws:ssm:TargetId": "doctor"})
            self.add("kms", "you may use the session key", "pass", f"GenerateDataKey on {prefs_key} succeeded")
        except botocore.exceptions.ClientError as exc:
            self.add("kms", "you may use the session key", "fail",
                     f"GenerateDataKey on {prefs_key}: {_error_code(exc)}",
                     "allow kms:GenerateDataKey on the session key for your role (the developer role has it)")
        self._relay_kms(prefs_key)

    def _preferences_match(self, key_arn: str) -> None:
        """The deployed preferences against what the stack deploys: the console rewrites them wholesale."""
        content = self._preferences_content()
        if content is None:
            self.add("kms", "preferences", "fail", f"no {PREFERENCES_DOCUMENT} document",
                     f"invoke deploy --env {self.cfg.name}")
            return
        inputs = content.get("inputs") or {}
        wanted = expected_preferences(self.cfg, key_arn)
        differ = [f"{k} = {inputs.get(k)!r} (stack: {v!r})" for k, v in wanted.items() if inputs.get(k) != v]
        if differ:
            self.add("kms", "preferences", "fail", f"{PREFERENCES_DOCUMENT} was changed outside the stack: "
                     + "; ".join(differ),
                     f"invoke runbook sessions-fail-relay-online; invoke deploy --env {self.cfg.name} puts the "
                     "stack's version back")
        else:
            self.add("kms", "preferences", "pass", f"{PREFERENCES_DOCUMENT} matches the stack")

    def _preferences_content(self) -> dict[str, Any] | None:
        try:
            doc = self.client("ssm").get_document(Name=PREFERENCES_DOCUMENT, DocumentFormat="JSON")
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in ("InvalidDocument", "InvalidDocumentOperation"):
                return None
            raise
        try:
            content = json.loads(doc.get("Content") or "{}")
        except ValueError:
            return {}
        return content if isinstance(content, dict) else {}

    def _preferences_key(self) -> str:
        try:
            doc = self.client("ssm").get_document(Name=PREFERENCES_DOCUMENT, DocumentFormat="JSON")
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) in ("InvalidDocument", "InvalidDocumentOperation"):
                return ""
            raise
        try:
            content = json.loads(doc.get("Content") or "{}")
        except ValueError:
            return ""
        return str((content.get("inputs") or {}).get("kmsKeyId") or "")

    def _relay_kms(self, key: str) -> None:
        role = self._relay_role()
        name = "relay role may use the session key"
        if role is None:
            self.skip("kms", name, "no relay instance profile role found")
            return
        key_arn = self.client("kms").describe_key(KeyId=key)["KeyMetadata"]["Arn"]
        self._role_may(section="kms", name=name, role=role, actions=["kms:Decrypt"], resources=[key_arn],
                       fix=f"allow kms:Decrypt on {key_arn} for the relay role (invoke deploy --env {self.cfg.name})")

    def _relay_role(self) -> dict[str, Any] | None:
        profile = str(((self.relay or {}).get("IamInstanceProfile") or {}).get("Arn", ""))
        if not profile:
            return None
        roles = self.client("iam").get_instance_profile(
            InstanceProfileName=profile.rsplit("/", 1)[-1])["InstanceProfile"].get("Roles", [])
        return roles[0] if roles else None

    def _role_documents(self, role_name: str) -> list[dict[str, Any]]:
        iam = self.client("iam")
        docs: list[dict[str, Any]] = []
        for pname in iam.list_role_policies(RoleName=role_name).get("PolicyNames", []):
            doc = iam.get_role_policy(RoleName=role_name, PolicyName=pname)["PolicyDocument"]
            docs.append(json.loads(doc) if isinstance(doc, str) else doc)
        for att in iam.list_attached_role_policies(RoleName=role_name).get("AttachedPolicies", []):
            pol = iam.get_policy(PolicyArn=att["PolicyArn"])["Policy"]
            ver = iam.get_policy_version(PolicyArn=att["PolicyArn"], VersionId=pol["DefaultVersionId"])
            doc = ver["PolicyVersion"]["Document"]
            docs.append(json.loads(doc) if isinstance(doc, str) else doc)
        return docs

    def _role_may(self, *, section: str, name: str, role: Mapping[str, Any], actions: Sequence[str],
                  resources: Sequence[str], fix: str) -> None:
        """Simulate; where the simulator is missing (sandbox), read the role's policies instead and say so."""
        arn = str(role["Arn"])
        try:
            decisions = self.simulate(arn, actions, resources)
            how = f"simulated ({SCP_NOTE})"
        except _Unavailable:
            docs = self._role_documents(str(role["RoleName"]))
            decisions = {a: "allowed" if statements_allow(docs, a) else "not allowed" for a in actions}
            how = "read from its policies, conditions not evaluated: no policy simulator in the sandbox"
        denied = [a for a in actions if decisions.get(a) != "allowed"]
        if denied:
            self.add(section, name, "fail", f"{arn} lacks {', '.join(denied)} ({how})", fix)
        else:
            self.add(section, name, "pass", f"{arn}: {', '.join(actions)} allowed ({how})")

    # ---- ECS ----
    def ecs(self) -> None:
        if not self.cfg.ecs.enabled:
            return
        ecs = self.client("ecs")
        cluster = self.cfg.stack_name
        clusters = ecs.describe_clusters(clusters=[cluster], include=["CONFIGURATIONS"]).get("clusters", [])
        info = clusters[0] if clusters else {}
        if info.get("status") != "ACTIVE":
            self.add("ecs", "cluster", "fail", f"cluster {cluster} is {info.get('status', 'missing')}",
                     f"invoke deploy --env {self.cfg.name}")
            return
        self.add("ecs", "cluster", "pass", f"{cluster} is ACTIVE")
        exec_cfg = (info.get("configuration") or {}).get("executeCommandConfiguration") or {}
        logging = exec_cfg.get("logging")
        if not exec_cfg or logging in (None, "NONE"):
            self.add("ecs", "cluster exec logging", "warn", f"cluster {cluster} does not log ECS Exec sessions",
                     f"set executeCommandConfiguration logging OVERRIDE to the log group (invoke deploy --env "
                     f"{self.cfg.name})")
        else:
            where = (exec_cfg.get("logConfiguration") or {}).get("cloudWatchLogGroupName", "")
            self.add("ecs", "cluster exec logging", "pass", f"{cluster}: {logging} {where}".strip())
        arns = ecs.list_services(cluster=cluster, maxResults=100).get("serviceArns", [])
        if not arns:
            self.add("ecs", "services", "warn", f"cluster {cluster} has no services", "nothing to shell into yet")
            return
        services = ecs.describe_services(cluster=cluster, services=arns[:10]).get("services", [])
        task_defs: dict[str, dict[str, Any]] = {}
        for svc in services:
            name = svc["serviceName"]
            self._service(cluster, svc)
            task_arns = ecs.list_tasks(cluster=cluster, serviceName=name, desiredStatus="RUNNING").get("taskArns", [])
            if not task_arns:
                self.add("ecs", f"{name} tasks", "warn", f"service {name} has no RUNNING task; task checks skipped",
                         f"aws ecs describe-services --cluster {cluster} --services {name} (see its events)")
                continue
            tasks = ecs.describe_tasks(cluster=cluster, tasks=task_arns[:MAX_TASKS_PER_SERVICE]).get("tasks", [])
            for task in tasks:
                self._task(cluster, name, task)
                td = str(task.get("taskDefinitionArn", ""))
                if td and td not in task_defs:
                    try:
                        task_defs[td] = ecs.describe_task_definition(taskDefinition=td)["taskDefinition"]
                    except botocore.exceptions.ClientError as exc:
                        self.add("ecs", f"task definition {td.rsplit('/', 1)[-1]}", "fail",
                                 f"DescribeTaskDefinition failed: {_error_code(exc)}",
                                 "allow ecs:DescribeTaskDefinition, or check the task definition still exists")
                        task_defs[td] = {}
                    self._task_definition(task_defs[td], task, exec_cfg)
                self._task_network(task)

    def _service(self, cluster: str, svc: Mapping[str, Any]) -> None:
        name = svc["serviceName"]
        check = f"{name} exec enabled"
        if "enableExecuteCommand" not in svc and self.cfg.sandbox:
            self.add("ecs", check, "warn", "not checkable here: the sandbox's AWS emulator (moto) drops "
                     "enableExecuteCommand when a service is created", "nothing to fix in the sandbox")
        elif svc.get("enableExecuteCommand"):
            self.add("ecs", check, "pass", f"service {name} starts tasks with ECS Exec")
        else:
            self.add("ecs", check, "fail", f"service {name} has enableExecuteCommand off",
                     enable_exec_fix(cluster=cluster, service=name))

    def _task(self, cluster: str, service: str, task: Mapping[str, Any]) -> None:
        tid = task_id(str(task["taskArn"]))
        status = str(task.get("lastStatus", ""))
        if status != "RUNNING":
            # Desired RUNNING but not there yet (PROVISIONING, PENDING, ACTIVATING) or on its way out.
            self.add("ecs", f"task {tid[:12]} status", "warn", f"task is {status or 'UNKNOWN'}, not RUNNING yet",
                     "wait for it, or check the service events if it never gets there")
        if task.get("launchType") == "EC2":
            self._ecs_agent(cluster, task)
        exec_off = exec_enabled_problem(task, cluster=cluster, service=service)
        if exec_off:
            line, fix = exec_off.split("; fix: ", 1)
            self.add("ecs", f"task {tid[:12]} exec", "fail", line, fix)
        else:
            self.add("ecs", f"task {tid[:12]} exec", "pass", f"enableExecuteCommand on ({service})")
            for container in task.get("containers") or []:
                cname = str(container.get("name"))
                problem = agent_problem(task, cname)
                if problem:
                    line, fix = problem[1].split("; fix: ", 1)
                    self.add("ecs", f"task {tid[:12]} agent {cname}", "fail", line, fix)
                else:
                    self.add("ecs", f"task {tid[:12]} agent {cname}", "pass", f"{EXEC_AGENT} RUNNING")
        platform = platform_problem(task)
        if platform:
            line, fix = platform.split("; fix: ", 1)
            self.add("ecs", f"task {tid[:12]} platform", "fail", line, fix)
        elif task.get("launchType", "FARGATE") == "FARGATE":
            self.add("ecs", f"task {tid[:12]} platform", "pass",
                     f"Fargate platform {task.get('platformVersion') or 'unknown'} (needs >= 1.4.0)")

    def _task_definition(self, td: Mapping[str, Any], task: Mapping[str, Any], exec_cfg: Mapping[str, Any]) -> None:
        if not td:
            return
        label = f"{td.get('family')}:{td.get('revision')}"
        for cdef in td.get("containerDefinitions") or []:
            cname = cdef.get("name")
            if (cdef.get("linuxParameters") or {}).get("initProcessEnabled"):
                self.add("ecs", f"{label} {cname} init process", "pass", "initProcessEnabled")
            else:
                self.add("ecs", f"{label} {cname} init process", "warn",
                         "initProcessEnabled is off: processes started by ECS Exec may linger as zombies",
                         "set linuxParameters.initProcessEnabled = true in the container definition")
            if cdef.get("readonlyRootFilesystem"):
                self.add("ecs", f"{label} {cname} root filesystem", "fail",
                         "readonlyRootFilesystem is on: ECS Exec cannot start its agent in this container",
                         "set readonlyRootFilesystem = false (mount writable volumes for what must stay read-only)")
            else:
                self.add("ecs", f"{label} {cname} root filesystem", "pass", "writable")
            keys = sorted({e.get("name") for e in cdef.get("environment") or []}
                          & {"AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"})
            if keys:
                self.add("ecs", f"{label} {cname} credentials env", "warn",
                         f"{', '.join(keys)} set: the exec agent uses these keys instead of the task role",
                         "remove static AWS keys from the container environment")
        if td.get("pidMode") == "task":
            self.add("ecs", f"{label} pidMode", "warn", "pidMode = task: ECS Exec can fail to reach containers "
                     "that share the PID namespace (amazon-ecs-exec-checker #75)", "remove pidMode unless needed")
        role_arn = str((task.get("overrides") or {}).get("taskRoleArn") or td.get("taskRoleArn") or "")
        if not role_arn:
            self.add("ecs", f"{label} task role", "fail", "no task role: the exec agent has no credentials for "
                     "ssmmessages", f"set taskRoleArn to {self.cfg.stack_name}-ecs-task (invoke deploy)")
            return
        role_name = role_arn.rsplit("/", 1)[-1]
        try:
            role = self.client("iam").get_role(RoleName=role_name)["Role"]
        except botocore.exceptions.ClientError as exc:
            if _error_code(exc) != "NoSuchEntity":
                raise
            self.add("ecs", f"{label} task role", "fail", f"task role {role_arn} does not exist",
                     f"invoke deploy --env {self.cfg.name} (recreates {self.cfg.stack_name}-ecs-task)")
            return
        self._role_may(section="ecs", name=f"{label} task role ssmmessages", role=role, actions=SSMMESSAGES_ACTIONS,
                       resources=["*"], fix=f"allow {', '.join(SSMMESSAGES_ACTIONS)} on * for {role_name}")
        log_group = str((exec_cfg.get("logConfiguration") or {}).get("cloudWatchLogGroupName") or "")
        if log_group and exec_cfg.get("logging") == "OVERRIDE":
            group_arn = self.arn("logs", f"log-group:{log_group}:*")
            self._role_may(section="ecs", name=f"{label} task role session logs", role=role,
                           actions=["logs:CreateLogStream", "logs:DescribeLogStreams", "logs:PutLogEvents"],
                           resources=[group_arn], fix=f"allow logs:CreateLogStream/DescribeLogStreams/PutLogEvents "
                           f"on {log_group} for {role_name}")
        if exec_cfg.get("kmsKeyId"):
            self._role_may(section="ecs", name=f"{label} task role exec key", role=role, actions=["kms:Decrypt"],
                           resources=[str(exec_cfg["kmsKeyId"])],
                           fix=f"allow kms:Decrypt on {exec_cfg['kmsKeyId']} for {role_name}")
        log_cfg = exec_cfg.get("logConfiguration") or {}
        bucket = str(log_cfg.get("s3BucketName") or "")
        if bucket and exec_cfg.get("logging") == "OVERRIDE":
            prefix = str(log_cfg.get("s3KeyPrefix") or "")
            actions = ["s3:PutObject"] + (["s3:GetEncryptionConfiguration"] if log_cfg.get("s3EncryptionEnabled")
                                          else [])
            self._role_may(section="ecs", name=f"{label} task role session bucket", role=role, actions=actions,
                           resources=[f"arn:{partition(self.cfg.region)}:s3:::{bucket}/{prefix}*"],
                           fix=f"allow {', '.join(actions)} on s3://{bucket}/{prefix} for {role_name}")

    def _ecs_agent(self, cluster: str, task: Mapping[str, Any]) -> None:
        """EC2 launch type: ECS Exec needs ECS container agent 1.50.2+ on the instance."""
        arn = str(task.get("containerInstanceArn") or "")
        if not arn:
            return
        found = self.client("ecs").describe_container_instances(cluster=cluster, containerInstances=[arn])
        instances = found.get("containerInstances", [])
        version = str(((instances[0] if instances else {}).get("versionInfo") or {}).get("agentVersion", ""))
        name = f"container instance {arn.rsplit('/', 1)[-1][:12]} agent"
        if version_at_least(version, MIN_ECS_AGENT):
            self.add("ecs", name, "pass", f"ECS agent {version}")
        else:
            self.add("ecs", name, "fail", f"ECS agent {version or 'unknown'} is older than {_fmt(MIN_ECS_AGENT)}",
                     "update the ECS agent (or move to a current ECS-optimized AMI) and start a new task")

    def _task_network(self, task: Mapping[str, Any]) -> None:
        """The checker's last step: a VPC with endpoints but none for ssmmessages has no way to the agent's API."""
        details = {d.get("name"): d.get("value") for a in task.get("attachments") or []
                   for d in a.get("details") or []}
        subnet = details.get("subnetId")
        if not subnet:
            return
        ec2 = self.client("ec2")
        subnets = ec2.describe_subnets(SubnetIds=[subnet]).get("Subnets", [])
        if not subnets:
            return
        vpc = subnets[0]["VpcId"]
        eps = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [vpc]}]).get("VpcEndpoints", [])
        wanted = f"com.amazonaws.{self.cfg.region}.ssmmessages"
        tid = task_id(str(task["taskArn"]))[:12]
        if eps and not any(e.get("ServiceName") == wanted for e in eps):
            self.add("ecs", f"task {tid} ssmmessages route", "warn", f"VPC {vpc} has endpoints but none for "
                     "ssmmessages: the task needs a NAT route instead", f"add the {wanted} interface endpoint")

    def run(self) -> list[CheckResult]:
        self.section("local", self.local)
        self.section("credentials", self.credentials)
        if self.identity is None:
            for name in ("relay", "network", "database", "iam", "kms", "ecs"):
                self.skip(name, f"{name} checks", "credentials or account check failed")
            return self.results
        for name, body in (("relay", self.relay_checks), ("relay", self.relay_egress), ("relay", self.relay_profile),
                           ("network", self.network), ("database", self.database),
                           ("iam", self.iam), ("kms", self.kms), ("ecs", self.ecs)):
            self.section(name, body)
        return self.results


def _native_available() -> bool:
    try:
        import ops.ssm.client  # noqa: F401
    except ImportError:
        return False
    return True


def _run_version(argv: Sequence[str | None]) -> str:
    try:
        proc = subprocess.run([str(a) for a in argv], capture_output=True, text=True, check=False, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return (proc.stdout or proc.stderr).strip().splitlines()[0] if (proc.stdout or proc.stderr).strip() else ""


def expected_preferences(cfg: EnvConfig, key_arn: str) -> dict[str, object]:
    """The Session Manager preference inputs the stack sets (stacks/session_logs.py) that sessions depend on."""
    return {
        "cloudWatchLogGroupName": f"/bastionless/{cfg.name}/sessions",
        "cloudWatchEncryptionEnabled": True,
        "cloudWatchStreamingEnabled": True,
        "kmsKeyId": key_arn,
        "runAsEnabled": False,
        "idleSessionTimeout": str(cfg.session.idle_timeout_minutes),
        "maxSessionDuration": str(cfg.session.max_session_minutes),
    }


def run_checks(cfg: EnvConfig) -> list[CheckResult]:
    """Every check for the environment, in chain order; never raises for a failed check."""
    return _Doctor(cfg).run()


def failed(results: Iterable[CheckResult]) -> list[CheckResult]:
    return [r for r in results if r.status == "fail"]


def format_json(results: Sequence[CheckResult]) -> str:
    return json.dumps({"ok": not failed(results), "checks": [r.to_dict() for r in results]}, indent=2)


_MARK = {"pass": "PASS", "warn": "WARN", "fail": "FAIL"}


def format_table(results: Sequence[CheckResult]) -> str:
    width_section = max([len(r.section) for r in results] + [7])
    width_name = max([len(r.name) for r in results] + [5])
    lines = [f"{'status':6}  {'section':{width_section}}  {'check':{width_name}}  detail"]
    for r in results:
        lines.append(f"{_MARK[r.status]:6}  {r.section:{width_section}}  {r.name:{width_name}}  {r.detail}")
        if r.fix and r.status != "pass":
            lines.append(f"{'':6}  {'':{width_section}}  {'':{width_name}}  fix: {r.fix}")
    counts = {s: sum(1 for r in results if r.status == s) for s in ("pass", "warn", "fail")}
    lines.append(f"{counts['pass']} pass, {counts['warn']} warn, {counts['fail']} fail")
    return "\n".join(lines)


def status_check_verdict(cfg: EnvConfig, system: str, instance: str) -> tuple[Status, str, str]:
    """EC2's two status checks as (status, detail, fix). An impaired system check means the host under
    the relay is failing: a stop and start moves the instance to other hardware; a reboot does not."""
    detail = f"system {system}, instance {instance}"
    if "impaired" in (system, instance):
        return ("fail", detail, f"invoke relay-restart --env {cfg.name} (stop + start: new hardware); if it stays "
                                f"impaired, invoke relay-replace --env {cfg.name}")
    if system == "ok" and instance == "ok":
        return "pass", detail, ""
    return ("warn", f"{detail} (a relay just started reports initializing for a few minutes)",
            f"wait, then invoke doctor --env {cfg.name} again")
