"""Environment files: every shipped one loads; every mistake names the file, the field and the fix."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ops.config import ENVS_DIR, available_envs, load_env, parse_env, subnet_plan
from ops.errors import ConfigError

SANDBOX = (ENVS_DIR / "sandbox.toml").read_text()
STAGING = (ENVS_DIR / "staging.toml").read_text()


def _parse(text: str, name: str = "x") -> object:
    return parse_env(name, text.encode(), Path(f"/tmp/envs/{name}.toml"))


def test_shipped_environments_load() -> None:
    assert set(available_envs()) >= {"sandbox", "staging", "prod"}
    sandbox, staging, prod = (load_env(n) for n in ("sandbox", "staging", "prod"))
    assert sandbox.sandbox and sandbox.state.backend == "local"
    assert staging.network.egress == "nat" and not staging.sandbox
    assert prod.network.egress == "endpoints" and prod.database.deletion_protection and prod.is_prod
    assert prod.network.az_count == 2
    assert sandbox.stack_name == "bastionless-sandbox"


def test_config_is_frozen() -> None:
    cfg = load_env("sandbox")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.region = "eu-west-1"  # type: ignore[misc]


def test_unknown_environment_lists_known_ones_and_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_env("nope")
    msg = str(err.value)
    assert "unknown environment 'nope'" in msg and "envs/nope.toml" in msg
    assert "sandbox" in msg and "copy envs/staging.toml" in msg


def test_invalid_environment_name_rejected() -> None:
    with pytest.raises(ConfigError, match="invalid"):
        load_env("../etc/passwd")


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda t: "bogus = 1\n" + t, "unknown key 'bogus'"),
        # Appended, it lands in the file's last table: the sandbox's last [[people]] entry.
        (lambda t: t + "\nbogus = 1\n", "unknown field people[1].bogus"),
        (lambda t: t.replace("[network]", "[network]\nvpc_size = 3"), "unknown field network.vpc_size"),
        (lambda t: t.replace('account_id = "123456789012"', 'account_id = "12345"'), "account_id"),
        (lambda t: t.replace('account_id = "123456789012"', "account_id = 123456789012"), "quoted string"),
        (lambda t: t.replace('region = "us-east-1"', 'region = "useast1"'), "region"),
        (lambda t: t.replace('egress = "endpoints"', 'egress = "vpn"'), "network.egress = 'vpn' is not allowed"),
        (lambda t: t.replace('vpc_cidr = "10.40.0.0/16"', 'vpc_cidr = "10.40.0.0/24"'), "prefix /24"),
        (lambda t: t.replace('vpc_cidr = "10.40.0.0/16"', 'vpc_cidr = "10.40.0.1/16"'), "not a valid network"),
        (lambda t: t.replace('vpc_cidr = "10.40.0.0/16"', 'vpc_cidr = "8.8.0.0/16"'), "not a private IPv4"),
        (lambda t: t.replace("az_count = 2", "az_count = 4"), "network.az_count = 4 is out of range"),
        (lambda t: t.replace("local_port = 5433", "local_port = 70000"), "tunnel.local_port = 70000"),
        (lambda t: t.replace("local_port = 5433", "local_port = true"), "whole number"),
        (lambda t: t.replace("local_port = 5433", "local_port = 5433\nsessions = 0"), "tunnel.sessions = 0 is out"),
        (lambda t: t.replace("local_port = 5433", "local_port = 5433\nsessions = 17"), "use 1 (one session"),
        (lambda t: t.replace("local_port = 5433", "local_port = 5433\nsessions = \"4\""), "whole number"),
        (lambda t: t.replace('name = "app"', 'name = "1app"'), "database.name"),
        (lambda t: t.replace("log_retention_days = 7", "log_retention_days = 8"), "retention value"),
        (lambda t: t.replace('["arn:aws:iam::123456789012:root"]', '["alice"]'), "not an IAM principal ARN"),
        (lambda t: t.replace("[network]", "network = 3\n[relay]"), "must be a table"),
        (lambda t: t.replace('account_id = "123456789012"   # moto\'s fixed account id', ""), "missing"),
        (lambda t: t + "\n[oops", "not valid TOML"),
    ],
)
def test_mistakes_name_file_field_and_fix(edit: object, expected: str) -> None:
    text = edit(SANDBOX)  # type: ignore[operator]
    assert text != SANDBOX, "the edit must change the file for the test to mean anything"
    with pytest.raises(ConfigError) as err:
        _parse(text)
    msg = str(err.value)
    assert msg.startswith("/tmp/envs/x.toml"), msg
    assert expected in msg, msg
    assert ";" in msg, f"no fix given: {msg}"


def test_sslmode_disable_only_in_sandbox() -> None:
    text = STAGING.replace('sslmode = "require"', 'sslmode = "disable"')
    with pytest.raises(ConfigError, match=r"database.sslmode .*outside the sandbox"):
        _parse(text)


def test_prod_requires_deletion_protection_and_remote_state() -> None:
    prod = (ENVS_DIR / "prod.toml").read_text()
    with pytest.raises(ConfigError, match="deletion_protection"):
        _parse(prod.replace("deletion_protection = true", "deletion_protection = false"), name="prod")
    # The flag decides, not the name: any env is production unless it says `production = false`.
    with pytest.raises(ConfigError, match="deletion_protection"):
        _parse(prod.replace("deletion_protection = true", "deletion_protection = false"), name="qa")
    _parse(prod.replace("deletion_protection = true", "deletion_protection = false")
           .replace('region = "eu-west-1"', 'region = "eu-west-1"\nproduction = false', 1), name="qa")


def test_s3_backend_needs_bucket_and_key() -> None:
    with pytest.raises(ConfigError, match=r"state\.bucket"):
        _parse(STAGING.replace('bucket = "example-bastionless-state-staging"', 'bucket = ""'))
    with pytest.raises(ConfigError, match=r"state\.key"):
        _parse(STAGING.replace('key = "bastionless/staging.tfstate"', 'key = "state"'))


def test_verify_full_needs_a_ca_bundle() -> None:
    text = STAGING.replace('sslmode = "require"', 'sslmode = "verify-full"')
    with pytest.raises(ConfigError, match="ca_bundle"):
        _parse(text)


def test_nat_per_az_only_with_nat() -> None:
    with pytest.raises(ConfigError, match="nat_per_az"):
        _parse(SANDBOX.replace('egress = "endpoints"', 'egress = "endpoints"\nnat_per_az = true'))


def test_subnet_plan_is_stable_when_adding_an_az() -> None:
    two, three = subnet_plan("10.0.0.0/16", 2), subnet_plan("10.0.0.0/16", 3)
    for tier in ("public", "private", "isolated"):
        assert three[tier][:2] == two[tier]
    every = [c for tier in three.values() for c in tier]
    assert len(set(every)) == len(every) == 9
    assert two == {
        "public": ["10.0.0.0/24", "10.0.1.0/24"],
        "private": ["10.0.4.0/24", "10.0.5.0/24"],
        "isolated": ["10.0.8.0/24", "10.0.9.0/24"],
    }


def test_tunnel_sessions_per_env() -> None:
    cfg = _parse(SANDBOX.replace("local_port = 5433", "local_port = 5433\nsessions = 4"))
    assert cfg.tunnel.sessions == 4  # type: ignore[attr-defined]
    assert load_env("sandbox").tunnel.sessions == 1
