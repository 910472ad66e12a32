"""`--break-glass` on AWS: the db tasks assume the env's break-glass role with the caller's own credentials
(MFA presented for IAM users), cache it for the process, and fail in one line when the caller may not."""

from __future__ import annotations

import types
from collections.abc import Iterator
from typing import Any

import botocore.exceptions
import pytest

from ops import aws
from ops.config import load_env
from ops.errors import CredentialsError


class FakeSts:
    def __init__(self, *, refuse: bool) -> None:
        self.refuse = refuse
        self.calls: list[dict[str, Any]] = []

    def get_caller_identity(self) -> dict[str, str]:
        return {"Arn": "arn:aws:sts::111111111111:assumed-role/AWSReservedSSO_Dev_1/alice@example.com"}

    def assume_role(self, **params: Any) -> dict[str, Any]:
        self.calls.append(params)
        if self.refuse:
            raise botocore.exceptions.ClientError({"Error": {"Code": "AccessDenied", "Message": "not you"}},
                                                  "AssumeRole")
        return {"Credentials": {"AccessKeyId": "ASIABREAKGLASS", "SecretAccessKey": "s", "SessionToken": "t"}}


@pytest.fixture
def sts(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Iterator[FakeSts]:
    fake = FakeSts(refuse=getattr(request, "param", False))
    real = aws.new_session

    def session(**kwargs: Any) -> Any:
        if "aws_access_key_id" in kwargs:  # the assumed role's session: a real (offline) one
            return real(**kwargs)
        return types.SimpleNamespace(client=lambda *_a, **_k: fake, scoped_config=lambda: {})

    monkeypatch.setattr(aws, "new_session", session)
    monkeypatch.delenv(aws.MFA_SERIAL_ENV, raising=False)
    aws.forget_assumed_roles()
    yield fake
    aws.forget_assumed_roles()


def test_break_glass_assumes_the_envs_role_named_after_the_person(sts: FakeSts) -> None:
    cfg = load_env("staging")
    aws.session(cfg)
    assert not sts.calls  # as yourself (the default): nothing assumed
    with aws.acting_as(aws.BREAK_GLASS):
        creds = aws.session(cfg).get_credentials()
        aws.session(cfg)  # cached: one AssumeRole per process (one MFA prompt)
    assert creds is not None and creds.access_key == "ASIABREAKGLASS"
    (call,) = sts.calls
    assert call["RoleArn"] == f"arn:aws:iam::{cfg.account_id}:role/bastionless-staging-break-glass"
    assert call["RoleSessionName"] == "alice@example.com"  # CloudTrail names who broke the glass
    assert "SerialNumber" not in call  # SSO: MFA was the identity provider's, at sign-in


@pytest.mark.parametrize("sts", [True], indirect=True)
def test_a_caller_who_may_not_assume_it_gets_one_line_and_the_next_step(sts: FakeSts) -> None:
    cfg = load_env("staging")
    with aws.acting_as(aws.BREAK_GLASS), pytest.raises(aws.BreakGlassRefusedError) as caught:
        aws.session(cfg)
    assert caught.value.message == (
        f"you may not assume the break-glass role arn:aws:iam::{cfg.account_id}:role/bastionless-staging-break-glass "
        "(AccessDenied): only access.break_glass_principals of envs/staging.toml may, with MFA")
    assert "drop --break-glass" in caught.value.next_step


def test_an_iam_users_mfa_device_needs_a_terminal_for_its_code(sts: FakeSts, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(aws.MFA_SERIAL_ENV, "arn:aws:iam::111111111111:mfa/alice")
    monkeypatch.setattr("sys.stdin", types.SimpleNamespace(isatty=lambda: False))
    with aws.acting_as(aws.BREAK_GLASS), pytest.raises(CredentialsError, match=r"MFA device .*no terminal"):
        aws.session(load_env("staging"))
    assert not sts.calls
