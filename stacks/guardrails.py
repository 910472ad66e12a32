"""Guardrails in the cdk-nag manner: an Aspect that checks every resource before synthesis completes.

Each rule is one small function over the resource's Terraform configuration (what `to_terraform()`
gives, tokens unresolved) with an id, the reason it exists and the fix. The Aspect collects every
violation; the same object, registered as the stack's validation, fails `app.synth()` listing all
of them at once (cdktf runs validations after aspects). A violation can be suppressed per resource,
only with a written reason: `guardrails.suppress(resource, "BL-RDS-3", reason="...")`.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jsii
from cdktf import IAspect, TerraformDataSource, TerraformResource
from constructs import IConstruct, IValidation

MIN_REASON_CHARS = 20
OPEN_CIDRS = ("0.0.0.0/0", "::/0")
SSH_PORT = 22
_IAM_POLICY_TYPES = ("aws_iam_role_policy", "aws_iam_policy", "aws_iam_user_policy", "aws_iam_group_policy")


@dataclass(frozen=True)
class Rule:
    id: str
    resource_types: tuple[str, ...]
    why: str
    fix: str
    # Returns the problems found in one resource's config (empty when compliant).
    check: Callable[[dict[str, Any], bool], list[str]]


@dataclass(frozen=True)
class Violation:
    rule: Rule
    path: str
    resource_type: str
    problem: str

    def message(self) -> str:
        return (f"[{self.rule.id}] {self.path} ({self.resource_type}): {self.problem}. "
                f"Why: {self.rule.why}. Fix: {self.rule.fix} (or, if it is intended, "
                f"guardrails.suppress(<construct>, \"{self.rule.id}\", reason=\"...\") with a written reason)")


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


def _rds_not_public(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    return ["publicly_accessible is true"] if _truthy(cfg.get("publicly_accessible")) else []


def _rds_encrypted(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    return [] if _truthy(cfg.get("storage_encrypted")) else ["storage_encrypted is not true"]


def _rds_deletion_protection(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    if sandbox or _truthy(cfg.get("deletion_protection")):
        return []
    return ["deletion_protection is not true outside the sandbox"]


def _rds_final_snapshot(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    if sandbox:
        return []
    if _truthy(cfg.get("skip_final_snapshot")):
        return ["skip_final_snapshot is true outside the sandbox"]
    if not cfg.get("final_snapshot_identifier"):
        return ["final_snapshot_identifier is not set"]
    return []


def _no_statement_logging(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    params = cfg.get("parameter") or []
    return [f"log_statement = {p.get('value')}" for p in params if isinstance(p, dict)
            and p.get("name") == "log_statement" and str(p.get("value")).lower() in ("all", "mod")]


def _sg_rules(resource_type: str, cfg: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(direction, rule) for every rule a security-group resource carries, in either style."""
    if resource_type == "aws_security_group":
        for direction in ("ingress", "egress"):
            for rule in cfg.get(direction) or []:
                if isinstance(rule, dict):
                    yield direction, rule
    elif resource_type == "aws_security_group_rule":
        yield str(cfg.get("type", "")), cfg
    elif resource_type == "aws_vpc_security_group_ingress_rule":
        yield "ingress", cfg
    elif resource_type == "aws_vpc_security_group_egress_rule":
        yield "egress", cfg


def _sources(rule: dict[str, Any]) -> list[str]:
    found: list[str] = []
    for key in ("cidr_blocks", "ipv6_cidr_blocks"):
        found += [str(c) for c in rule.get(key) or []]
    for key in ("cidr_ipv4", "cidr_ipv6"):
        if rule.get(key):
            found.append(str(rule[key]))
    return found


def _covers_port(rule: dict[str, Any], port: int) -> bool:
    protocol = str(rule.get("protocol", rule.get("ip_protocol", ""))).lower()
    if protocol in ("-1", "all"):
        return True
    if protocol not in ("tcp", "6"):
        return False
    try:
        low = int(rule.get("from_port", 0))
        high = int(rule.get("to_port", low))
    except (TypeError, ValueError):
        return True  # unknown at synth time: assume the worst
    return low <= port <= high


_SG_TYPES = ("aws_security_group", "aws_security_group_rule", "aws_vpc_security_group_ingress_rule",
             "aws_vpc_security_group_egress_rule")


def _make_sg_check(resource_type: str, kind: str) -> Callable[[dict[str, Any], bool], list[str]]:
    def check(cfg: dict[str, Any], sandbox: bool) -> list[str]:
        problems = []
        for direction, rule in _sg_rules(resource_type, cfg):
            if kind == "open" and direction == "ingress":
                problems += [f"ingress allowed from {c}" for c in _sources(rule) if c in OPEN_CIDRS]
            if kind == "ssh" and _covers_port(rule, SSH_PORT):
                problems.append(f"{direction} rule covers port {SSH_PORT}")
        return problems
    return check


def _imdsv2(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    meta = cfg.get("metadata_options") or {}
    if isinstance(meta, list):
        meta = meta[0] if meta else {}
    return [] if meta.get("http_tokens") == "required" else ["metadata_options.http_tokens is not \"required\""]


def _log_group(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    problems = []
    if not cfg.get("kms_key_id"):
        problems.append("kms_key_id is not set")
    retention = cfg.get("retention_in_days")
    if not retention or retention == 0:
        problems.append("retention_in_days is not set (logs would be kept forever)")
    return problems


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _document_statements(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """An aws_iam_policy_document's statement blocks in IAM's own shape (Effect, Action, Resource)."""
    return [{"Sid": b.get("sid", "(no Sid)"), "Effect": b.get("effect", "Allow"), "Action": b.get("actions", []),
             "Resource": b.get("resources", []), **({"NotResource": b["not_resources"]} if b.get("not_resources")
                                                    else {})}
            for b in _as_list(cfg.get("statement", [])) if isinstance(b, dict)]


def _start_session_on_star(cfg: dict[str, Any], sandbox: bool) -> list[str]:
    if "statement" in cfg:
        return _start_session_statements(_document_statements(cfg))
    raw = cfg.get("policy")
    if not isinstance(raw, str):
        return []
    try:
        doc = json.loads(raw)
    except ValueError:
        # A policy that is a single unresolved token cannot be read here; say so rather than pass it.
        return ["policy is not literal JSON, so it cannot be checked"] if "StartSession" in raw else []
    return _start_session_statements(_as_list(doc.get("Statement", [])))


def _start_session_statements(statements: list[Any]) -> list[str]:
    problems = []
    for stmt in statements:
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow":
            continue
        actions = [str(a).lower() for a in _as_list(stmt.get("Action", []))]
        if not any(fnmatch.fnmatchcase("ssm:startsession", a) for a in actions):
            continue
        resources = [str(r) for r in _as_list(stmt.get("Resource", []))]
        if "NotResource" in stmt or "*" in resources:
            problems.append(f"statement {stmt.get('Sid', '(no Sid)')} allows ssm:StartSession on every resource")
    return problems


RULES: tuple[Rule, ...] = (
    Rule("BL-RDS-1", ("aws_db_instance",), "a public database is one leaked password away from the internet",
         "set publicly_accessible = false; reach it through the relay", _rds_not_public),
    Rule("BL-RDS-2", ("aws_db_instance",), "data, backups and snapshots must be encrypted at rest",
         "set storage_encrypted = true", _rds_encrypted),
    Rule("BL-RDS-3", ("aws_db_instance",), "one wrong destroy must not delete a real environment's data",
         "set [database] deletion_protection = true in the env file", _rds_deletion_protection),
    Rule("BL-RDS-4", ("aws_db_instance",), "deleting a real database must leave a final snapshot",
         "set skip_final_snapshot = false and a final_snapshot_identifier", _rds_final_snapshot),
    Rule("BL-RDS-5", ("aws_db_parameter_group",),
         "logging every (or every modifying) statement writes the data in them, secrets included, to the logs",
         "use log_statement = ddl and log_min_duration_statement for slow queries", _no_statement_logging),
    Rule("BL-SG-1", _SG_TYPES, "nothing in this design accepts connections from the internet",
         "allow the specific security group (source_security_group_id) instead of 0.0.0.0/0 or ::/0",
         lambda cfg, sb: []),  # replaced per type below
    Rule("BL-SG-2", _SG_TYPES, "access is through Session Manager; SSH is never needed and never opened",
         "remove the port 22 rule (and ranges that include it)", lambda cfg, sb: []),
    Rule("BL-EC2-1", ("aws_instance",), "IMDSv1 lets an SSRF bug read the instance role's credentials",
         "set metadata_options { http_tokens = \"required\" }", _imdsv2),
    Rule("BL-LOG-1", ("aws_cloudwatch_log_group",),
         "session logs may contain secrets typed into shells and must not be kept forever",
         "set kms_key_id to the session key and retention_in_days", _log_group),
    Rule("BL-IAM-1", _IAM_POLICY_TYPES,
         "ssm:StartSession on * opens a shell or tunnel to every managed node in the account",
         "list the relay instance ARN and the port-forwarding document ARN as resources", _start_session_on_star),
)
RULES_BY_ID = {r.id: r for r in RULES}


def _check(rule: Rule, resource_type: str, cfg: dict[str, Any], sandbox: bool) -> list[str]:
    if rule.id == "BL-SG-1":
        return _make_sg_check(resource_type, "open")(cfg, sandbox)
    if rule.id == "BL-SG-2":
        return _make_sg_check(resource_type, "ssh")(cfg, sandbox)
    return rule.check(cfg, sandbox)


def resource_config(resource: TerraformResource) -> dict[str, Any]:
    """The resource's own Terraform arguments (unresolved tokens left as placeholders)."""
    block: dict[str, Any] = resource.to_terraform().get("resource", {})
    for by_name in block.values():
        for cfg in by_name.values():
            return dict(cfg)
    return {}


@jsii.implements(IAspect)
@jsii.implements(IValidation)
class Guardrails:
    """Register with `Aspects.of(stack).add(g)` and `stack.node.add_validation(g)` (BastionlessStack does)."""

    def __init__(self, *, sandbox: bool) -> None:
        self.sandbox = sandbox
        self.violations: list[Violation] = []
        self.suppressions: dict[tuple[str, str], str] = {}
        self._seen: set[str] = set()

    def suppress(self, construct: IConstruct, rule_id: str, *, reason: str) -> None:
        """Accept a rule's violation on one resource, for a reason a reviewer can read."""
        if rule_id not in RULES_BY_ID:
            raise ValueError(f"unknown guardrail rule {rule_id!r}; rules: {', '.join(RULES_BY_ID)}")
        if len(reason.strip()) < MIN_REASON_CHARS:
            raise ValueError(f"suppressing {rule_id} on {construct.node.path} needs a written reason "
                             f"(at least {MIN_REASON_CHARS} characters saying why the risk is acceptable)")
        self.suppressions[(construct.node.path, rule_id)] = reason.strip()

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, TerraformDataSource) and node.terraform_resource_type == "aws_iam_policy_document":
            self._visit_document(node)
            return
        if not isinstance(node, TerraformResource):
            return
        path = node.node.path
        # Aspects may visit a node more than once (nested stacks, repeated synth): report once.
        if path in self._seen:
            return
        self._seen.add(path)
        resource_type = node.terraform_resource_type
        cfg = resource_config(node)
        for rule in RULES:
            if resource_type not in rule.resource_types or (path, rule.id) in self.suppressions:
                continue
            for problem in _check(rule, resource_type, cfg, self.sandbox):
                self.violations.append(Violation(rule, path, resource_type, problem))

    def _visit_document(self, node: TerraformDataSource) -> None:
        """Role policies are parsed documents (stacks/policy_document.py): BL-IAM-1 reads their statements."""
        path = node.node.path
        if path in self._seen:
            return
        self._seen.add(path)
        blocks: dict[str, Any] = node.to_terraform().get("data", {})
        cfg = next((dict(c) for by_name in blocks.values() for c in by_name.values()), {})
        rule = RULES_BY_ID["BL-IAM-1"]
        if (path, rule.id) in self.suppressions:
            return
        for problem in _start_session_on_star(cfg, self.sandbox):
            self.violations.append(Violation(rule, path, "aws_iam_policy_document", problem))

    def validate(self) -> list[str]:
        if not self.violations:
            return []
        return [f"GuardrailError: {v.message()}" for v in self.violations]
