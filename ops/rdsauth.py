"""RDS IAM database authentication tokens: minting one (boto3, locally, per connection) and checking
one the way RDS does (sans-I/O: the clock and the key lookup are passed in; the sandbox's RDS front
uses it, tests use it to prove what a token says).

A token is a SigV4 presigned URL without its scheme:

    <rds host>:<port>/?Action=connect&DBUser=<user>&X-Amz-Algorithm=AWS4-HMAC-SHA256
        &X-Amz-Credential=<key id>/<yyyymmdd>/<region>/rds-db/aws4_request&X-Amz-Date=<yyyymmddThhmmssZ>
        &X-Amz-Expires=900&X-Amz-SignedHeaders=host[&X-Amz-Security-Token=...]&X-Amz-Signature=<hex>

It is a credential for 15 minutes: it never goes into argv, logs, files or exceptions.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote

from ops.errors import OpsError

SERVICE = "rds-db"
ALGORITHM = "AWS4-HMAC-SHA256"
MAX_EXPIRES = 900
# Clocks differ; AWS accepts requests up to 5 minutes in the future.
CLOCK_SKEW = timedelta(minutes=5)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class TokenRefused(OpsError):
    """The token does not authenticate this login; the message says why (never the token itself)."""


@dataclass(frozen=True)
class SigningKey:
    """What the verifier knows about an access key: its secret and whose it is."""

    secret: str
    principal: str
    # The principal's `db_user` tag: the DB user the IAM policy lets it connect as (ABAC).
    db_user: str


@dataclass(frozen=True)
class TokenClaims:
    host: str
    port: int
    db_user: str
    access_key_id: str
    region: str
    signed_at: datetime
    expires_in: int


def mint(boto_session: Any, *, host: str, port: int, db_user: str, region: str) -> str:
    """A fresh token for the RDS endpoint host:port (never localhost), signed locally; no AWS call."""
    client = boto_session.client("rds", region_name=region)
    return str(client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=db_user, Region=region))


def parse(token: str) -> tuple[TokenClaims, dict[str, str], str]:
    """(claims, query parameters, host:port as signed). Raises TokenRefused for anything malformed."""
    hostport, sep, query = token.partition("/?")
    if not sep or not hostport or "://" in hostport:
        raise TokenRefused("the password is not an IAM authentication token")
    host, _, port_text = hostport.rpartition(":")
    if not host or not port_text.isdigit():
        raise TokenRefused("the token names no host:port")
    pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=False)
    params = dict(pairs)
    if len(params) != len(pairs):
        raise TokenRefused("the token repeats a parameter")
    for required in ("Action", "DBUser", "X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires",
                     "X-Amz-SignedHeaders", "X-Amz-Signature"):
        if required not in params:
            raise TokenRefused(f"the token has no {required}")
    scope = params["X-Amz-Credential"].split("/")
    if len(scope) != 5 or scope[3] != SERVICE or scope[4] != "aws4_request":
        raise TokenRefused("the token's credential scope is not rds-db")
    try:
        signed_at = datetime.strptime(params["X-Amz-Date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        expires = int(params["X-Amz-Expires"])
    except ValueError:
        raise TokenRefused("the token's date or expiry is malformed") from None
    if scope[1] != signed_at.strftime("%Y%m%d"):
        raise TokenRefused("the token's credential date does not match its signing date")
    claims = TokenClaims(host=host, port=int(port_text), db_user=params["DBUser"], access_key_id=scope[0],
                         region=scope[2], signed_at=signed_at, expires_in=expires)
    return claims, params, hostport


def _canonical_query(params: dict[str, str]) -> str:
    items = sorted((quote(k, safe="-_.~"), quote(v, safe="-_.~")) for k, v in params.items() if k != "X-Amz-Signature")
    return "&".join(f"{k}={v}" for k, v in items)


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode("utf-8"), hashlib.sha256).digest()


def signature(*, secret: str, hostport: str, params: dict[str, str], signed_at: datetime, region: str) -> str:
    canonical = "\n".join(["GET", "/", _canonical_query(params), f"host:{hostport}", "", "host", _EMPTY_SHA256])
    day = signed_at.strftime("%Y%m%d")
    to_sign = "\n".join([ALGORITHM, signed_at.strftime("%Y%m%dT%H%M%SZ"), f"{day}/{region}/{SERVICE}/aws4_request",
                         hashlib.sha256(canonical.encode("utf-8")).hexdigest()])
    key = _hmac(("AWS4" + secret).encode("utf-8"), day)
    for part in (region, SERVICE, "aws4_request"):
        key = _hmac(key, part)
    return hmac.new(key, to_sign.encode("utf-8"), hashlib.sha256).hexdigest()


def verify(token: str, *, host: str, port: int, region: str, login_user: str, now: datetime,
           lookup: Callable[[str], SigningKey | None]) -> TokenClaims:
    """RDS's checks, in its order of cheapness: shape, action, host:port, user, region, time, key,
    signature, and the IAM permission (here: the signer's db_user tag, our ABAC policy)."""
    claims, params, hostport = parse(token)
    if params["Action"] != "connect":
        raise TokenRefused("the token is not for the connect action")
    if params["X-Amz-Algorithm"] != ALGORITHM or params["X-Amz-SignedHeaders"] != "host":
        raise TokenRefused("the token is not signed with SigV4 over the host header")
    if claims.host.lower() != host.lower() or claims.port != port:
        raise TokenRefused(f"the token was signed for {claims.host}:{claims.port}, not for this database "
                           f"({host}:{port})")
    if claims.db_user != login_user:
        raise TokenRefused(f"the token is for DB user {claims.db_user!r}, not {login_user!r}")
    if claims.region != region:
        raise TokenRefused(f"the token was signed for region {claims.region}, not {region}")
    if not 0 < claims.expires_in <= MAX_EXPIRES:
        raise TokenRefused("the token's lifetime is not between 1 and 900 seconds")
    if claims.signed_at > now + CLOCK_SKEW:
        raise TokenRefused("the token is signed in the future (check the clock)")
    if now > claims.signed_at + timedelta(seconds=claims.expires_in):
        raise TokenRefused("the token has expired (tokens live 15 minutes; a new connection signs a new one)")
    key = lookup(claims.access_key_id)
    if key is None:
        raise TokenRefused("the token is signed with an unknown access key")
    expected = signature(secret=key.secret, hostport=hostport, params=params, signed_at=claims.signed_at,
                         region=claims.region)
    if not hmac.compare_digest(expected, params["X-Amz-Signature"]):
        raise TokenRefused("the token's signature does not match")
    if key.db_user != login_user:
        raise TokenRefused(f"{key.principal} is not allowed rds-db:connect as {login_user!r} "
                           f"(its db_user tag is {key.db_user or 'missing'})")
    return claims


def token_source(boto_session: Any, *, region: str) -> Callable[[str, int, str], str]:
    """A minting function bound to one RDS client: building the client costs tens of milliseconds, signing
    with it well under one, and a connection should not pay the former."""
    client = boto_session.client("rds", region_name=region)

    def mint_one(host: str, port: int, db_user: str) -> str:
        return str(client.generate_db_auth_token(DBHostname=host, Port=port, DBUsername=db_user, Region=region))

    return mint_one
