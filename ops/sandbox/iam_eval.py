"""IAM identity-policy evaluation for the sandbox, sans-I/O: policy documents and a request in, a decision out.

moto 5.2.5 authenticates requests (access key -> IAM user or assumed role, SigV4 signature) but its own
evaluation ignores `Resource` and most of `Condition` (see the module doc of moto.iam.access_control), so
a policy scoped to one secret either allows nothing or everything there. The sandbox evaluates the
caller's policies here instead, in two places: moto itself (ops.sandbox.moto_iam patches its check) and
our Session Manager endpoint (StartSession, TerminateSession, ResumeSession, ExecuteCommand and the
other calls it serves). What is evaluated, as AWS does for identity-based policies:

- Allow/Deny statements, `Action`/`NotAction` (case-insensitive wildcards), `Resource`/`NotResource`;
  an explicit Deny wins, no Allow is an implicit deny;
- the policy variables `${aws:userid}`, `${aws:username}`, `${aws:PrincipalAccount}` in resources and
  condition values;
- the String*, Arn*, Numeric*, Bool and Null condition operators, their `IfExists` forms and the
  `ForAnyValue:`/`ForAllValues:` set qualifiers; a missing key fails a positive operator and satisfies a
  negated one;
- trust policies for sts:AssumeRole: the principal (an account's `root` stands for every principal of
  that account, a role's ARN for its sessions) and the statement's conditions.

Not evaluated (README, "What the sandbox does not enforce"): service control policies, permissions
boundaries, session policies, resource-based policies other than trust policies. An operator this
module does not know is refused with its name rather than ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Decision(Enum):
    ALLOW = "allow"
    EXPLICIT_DENY = "explicit deny"
    IMPLICIT_DENY = "implicit deny"


class UnsupportedPolicyError(ValueError):
    """A policy uses something this evaluator cannot judge; the caller refuses the request and says so."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: what AWS would put into aws:userid / aws:username, and their identity policies."""

    arn: str
    userid: str
    account: str
    policies: tuple[Mapping[str, Any], ...] = ()

    @property
    def username(self) -> str:
        # aws:username exists only for IAM users.
        return self.arn.rsplit("/", 1)[-1] if ":user/" in self.arn else ""


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    action: str
    resource: str
    why: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision is Decision.ALLOW


@dataclass(frozen=True)
class Request:
    action: str
    resources: tuple[str, ...] = ("*",)
    context: Mapping[str, Sequence[str]] = field(default_factory=dict)


def _listify(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _glob(pattern: str, value: str, *, ignore_case: bool) -> bool:
    """IAM wildcards: `*` any run of characters, `?` one character, everything else literal."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL) is not None


def _substitute(text: str, principal: Principal) -> str:
    variables = {"aws:userid": principal.userid, "aws:username": principal.username,
                 "aws:principalaccount": principal.account, "aws:principalarn": principal.arn}

    def repl(match: re.Match[str]) -> str:
        key = match.group(1).lower()
        if key not in variables:
            raise UnsupportedPolicyError(f"policy variable ${{{match.group(1)}}} is not evaluated by the sandbox")
        return variables[key]

    # Terraform writes `$${...}` for a literal `${...}`; a stored policy has the single form.
    return re.sub(r"\$\{([^}]+)\}", repl, text)


def _context_values(context: Mapping[str, Sequence[str]], key: str) -> list[str] | None:
    for name, values in context.items():
        if name.lower() == key.lower():
            return list(values)
    return None


_NEGATED = {"StringNotEquals", "StringNotEqualsIgnoreCase", "StringNotLike", "ArnNotEquals", "ArnNotLike",
            "NumericNotEquals"}
_NUMERIC = {"NumericEquals": lambda a, w: a == w, "NumericNotEquals": lambda a, w: a == w,
            "NumericLessThan": lambda a, w: a < w, "NumericLessThanEquals": lambda a, w: a <= w,
            "NumericGreaterThan": lambda a, w: a > w, "NumericGreaterThanEquals": lambda a, w: a >= w}


def _compare(operator: str, wanted: str, actual: str) -> bool:
    if operator in ("StringEquals", "StringNotEquals"):
        return wanted == actual
    if operator in ("StringEqualsIgnoreCase", "StringNotEqualsIgnoreCase"):
        return wanted.lower() == actual.lower()
    if operator in ("StringLike", "StringNotLike"):
        return _glob(wanted, actual, ignore_case=False)
    if operator in ("ArnEquals", "ArnLike", "ArnNotEquals", "ArnNotLike"):
        return _glob(wanted, actual, ignore_case=False)
    if operator == "Bool":
        return wanted.lower() == actual.lower()
    if operator in _NUMERIC:
        # The break-glass trust's aws:MultiFactorAuthAge; a value that is not a number never matches, as on AWS.
        try:
            return bool(_NUMERIC[operator](float(actual), float(wanted)))
        except ValueError:
            return False
    raise UnsupportedPolicyError(f"condition operator {operator} is not evaluated by the sandbox")


def _condition_holds(raw_operator: str, key: str, wanted_raw: Any, context: Mapping[str, Sequence[str]],
                     principal: Principal) -> bool:
    qualifier, _, operator = raw_operator.rpartition(":")
    if_exists = operator.endswith("IfExists")
    operator = operator.removesuffix("IfExists")
    wanted = [_substitute(w, principal) for w in _listify(wanted_raw)]
    actual = _context_values(context, key)
    if operator == "Null":
        expect_absent = any(w.lower() == "true" for w in wanted)
        return (actual is None or actual == []) == expect_absent
    if actual is None or actual == []:
        return if_exists or operator in _NEGATED
    positive = operator.replace("Not", "", 1) if operator in _NEGATED else operator
    if qualifier == "ForAllValues":
        result = all(any(_compare(positive, w, a) for w in wanted) for a in actual)
    else:  # ForAnyValue, or a single-valued key
        result = any(_compare(positive, w, a) for w in wanted for a in actual)
    return not result if operator in _NEGATED else result


def _conditions_hold(statement: Mapping[str, Any], context: Mapping[str, Sequence[str]],
                     principal: Principal) -> bool:
    block = statement.get("Condition") or {}
    for operator, pairs in block.items():
        for key, wanted in (pairs or {}).items():
            if not _condition_holds(operator, key, wanted, context, principal):
                return False
    return True


def _statement_applies(statement: Mapping[str, Any], action: str, resource: str,
                       context: Mapping[str, Sequence[str]], principal: Principal) -> bool:
    if "NotAction" in statement:
        if any(_glob(a, action, ignore_case=True) for a in _listify(statement["NotAction"])):
            return False
    elif not any(_glob(a, action, ignore_case=True) for a in _listify(statement.get("Action"))):
        return False
    if "NotResource" in statement:
        if any(_glob(_substitute(r, principal), resource, ignore_case=False)
               for r in _listify(statement["NotResource"])):
            return False
    elif not any(_glob(_substitute(r, principal), resource, ignore_case=False)
                 for r in _listify(statement.get("Resource"))):
        return False
    return _conditions_hold(statement, context, principal)


def _statements(policy: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    raw = policy.get("Statement") or []
    return [raw] if isinstance(raw, dict) else [s for s in raw if isinstance(s, dict)]


def evaluate(principal: Principal, action: str, resource: str,
             context: Mapping[str, Sequence[str]] | None = None) -> Outcome:
    """One action on one resource against the principal's identity policies."""
    ctx = context or {}
    allowed_by = ""
    for policy in principal.policies:
        for statement in _statements(policy):
            if not _statement_applies(statement, action, resource, ctx, principal):
                continue
            sid = str(statement.get("Sid") or "(no Sid)")
            if statement.get("Effect") == "Deny":
                return Outcome(Decision.EXPLICIT_DENY, action, resource, f"denied by statement {sid}")
            allowed_by = allowed_by or sid
    if allowed_by:
        return Outcome(Decision.ALLOW, action, resource, f"allowed by statement {allowed_by}")
    return Outcome(Decision.IMPLICIT_DENY, action, resource, "no identity-based policy allows it")


def authorize(principal: Principal, request: Request) -> Outcome:
    """Every resource of the request must be allowed (StartSession: the instance and the document)."""
    last: Outcome | None = None
    for resource in request.resources or ("*",):
        try:
            last = evaluate(principal, request.action, resource, request.context)
        except UnsupportedPolicyError as exc:
            return Outcome(Decision.IMPLICIT_DENY, request.action, resource, str(exc))
        if not last.allowed:
            return last
    assert last is not None
    return last


def denial_message(principal: Principal, outcome: Outcome) -> str:
    """AWS's wording, so tasks see the same text they would see on AWS."""
    kind = "an explicit deny in an identity-based policy" if outcome.decision is Decision.EXPLICIT_DENY \
        else "no identity-based policy allows the " + outcome.action + " action"
    return (f"User: {principal.arn} is not authorized to perform: {outcome.action} on resource: "
            f"{outcome.resource} because {kind}")


def _principal_matches(expected: Iterable[str], caller: Principal) -> bool:
    for want in expected:
        if want == "*" or want == caller.arn:
            return True
        account_root = re.fullmatch(r"arn:[^:]+:iam::(\d{12}):root", want)
        if account_root is not None and account_root.group(1) == caller.account:
            return True
        if want.isdigit() and want == caller.account:
            return True
        role = re.fullmatch(r"arn:([^:]+):iam::(\d{12}):role/(?:.*/)?([^/]+)", want)
        if role is not None and caller.arn.startswith(
                f"arn:{role.group(1)}:sts::{role.group(2)}:assumed-role/{role.group(3)}/"):
            return True
    return False


def trust_allows(trust_policy: Mapping[str, Any], caller: Principal, *, action: str = "sts:AssumeRole",
                 context: Mapping[str, Sequence[str]] | None = None) -> Outcome:
    """A role's trust policy: may `caller` assume it? (The caller's own policy is checked separately.)"""
    ctx = context or {}
    allowed = False
    for statement in _statements(trust_policy):
        if not any(_glob(a, action, ignore_case=True) for a in _listify(statement.get("Action"))):
            continue
        principal = statement.get("Principal") or {}
        expected = ["*"] if principal == "*" else _listify(principal.get("AWS")) if isinstance(principal, dict) else []
        if not _principal_matches(expected, caller):
            continue
        try:
            holds = _conditions_hold(statement, ctx, caller)
        except UnsupportedPolicyError as exc:
            return Outcome(Decision.IMPLICIT_DENY, action, "trust policy", str(exc))
        if not holds:
            continue
        if statement.get("Effect") == "Deny":
            return Outcome(Decision.EXPLICIT_DENY, action, "trust policy", "denied by the role's trust policy")
        allowed = True
    if allowed:
        return Outcome(Decision.ALLOW, action, "trust policy", "the role's trust policy names the caller")
    return Outcome(Decision.IMPLICIT_DENY, action, "trust policy",
                   "the role's trust policy does not allow the caller (principal or condition)")
