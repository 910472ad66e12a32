"""RDS IAM auth tokens: what boto3 mints is what our verifier accepts, and every way a token can be
wrong (expired, forged, someone else's user, another host) is refused with a reason. Fast: no processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, urlencode

import boto3
import pytest

from ops import rdsauth
from ops.rdsauth import SigningKey, TokenRefused

HOST = "app.abc123.us-east-1.rds.amazonaws.com"
PORT = 5432
REGION = "us-east-1"
KEYS = {
    "AKIAALICE0000000000A": SigningKey(secret="alice-secret-key-000000000000000000000000", principal="alice",
                                       db_user="alice"),
    "AKIABOB00000000000BB": SigningKey(secret="bob-secret-key-00000000000000000000000000", principal="bob",
                                       db_user="bob"),
}


def mint(key_id: str, *, user: str, host: str = HOST, port: int = PORT, region: str = REGION) -> str:
    session = boto3.Session(aws_access_key_id=key_id, aws_secret_access_key=KEYS[key_id].secret, region_name=region)
    return rdsauth.mint(session, host=host, port=port, db_user=user, region=region)


def check(token: str, *, user: str, now: datetime | None = None, host: str = HOST) -> rdsauth.TokenClaims:
    return rdsauth.verify(token, host=host, port=PORT, region=REGION, login_user=user,
                          now=now or datetime.now(UTC), lookup=KEYS.get)


def test_a_boto3_token_verifies_and_names_its_user_and_signer() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    assert token.startswith(f"{HOST}:{PORT}/?")
    claims = check(token, user="alice")
    assert (claims.db_user, claims.access_key_id, claims.expires_in) == ("alice", "AKIAALICE0000000000A", 900)


def test_expired_token_is_refused() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    with pytest.raises(TokenRefused, match="expired"):
        check(token, user="alice", now=datetime.now(UTC) + timedelta(minutes=16))
    # 14 minutes later it still works: tokens gate the login for 15 minutes.
    check(token, user="alice", now=datetime.now(UTC) + timedelta(minutes=14))


def test_forged_signature_is_refused() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    forged = token[:-4] + ("0000" if not token.endswith("0000") else "1111")
    with pytest.raises(TokenRefused, match="signature"):
        check(forged, user="alice")


def test_a_token_signed_with_the_wrong_secret_is_refused() -> None:
    session = boto3.Session(aws_access_key_id="AKIAALICE0000000000A", aws_secret_access_key="guessed",
                            region_name=REGION)
    token = rdsauth.mint(session, host=HOST, port=PORT, db_user="alice", region=REGION)
    with pytest.raises(TokenRefused, match="signature"):
        check(token, user="alice")


def test_alice_cannot_log_in_as_bob_even_with_a_valid_signature() -> None:
    token = mint("AKIAALICE0000000000A", user="bob")
    with pytest.raises(TokenRefused, match="not allowed rds-db:connect as 'bob'"):
        check(token, user="bob")


def test_a_token_for_one_user_does_not_log_in_another() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    with pytest.raises(TokenRefused, match="for DB user 'alice', not 'bob'"):
        check(token, user="bob")


def test_a_token_for_localhost_is_refused() -> None:
    token = mint("AKIAALICE0000000000A", user="alice", host="127.0.0.1")
    with pytest.raises(TokenRefused, match=r"signed for 127\.0\.0\.1"):
        check(token, user="alice")


def test_edited_claims_break_the_signature() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    hostport, _, query = token.partition("/?")
    params = dict(parse_qsl(query))
    params["X-Amz-Expires"] = "600"
    with pytest.raises(TokenRefused, match="signature"):
        check(f"{hostport}/?{urlencode(params)}", user="alice")


def test_unknown_key_and_non_tokens_are_refused() -> None:
    session = boto3.Session(aws_access_key_id="AKIAUNKNOWN000000000", aws_secret_access_key="x", region_name=REGION)
    token = rdsauth.mint(session, host=HOST, port=PORT, db_user="alice", region=REGION)
    with pytest.raises(TokenRefused, match="unknown access key"):
        check(token, user="alice")
    for text in ("hunter2", "", f"{HOST}:{PORT}/?Action=connect", "https://x:1/?a=b", "a:b/?c=d"):
        with pytest.raises(TokenRefused):
            check(text, user="alice")


def test_refusals_never_quote_the_token() -> None:
    token = mint("AKIAALICE0000000000A", user="alice")
    signature = dict(parse_qsl(token.partition("/?")[2]))["X-Amz-Signature"]
    with pytest.raises(TokenRefused) as caught:
        check(token, user="alice", now=datetime.now(UTC) + timedelta(hours=1))
    assert signature not in str(caught.value)
