"""Bad inputs end in one line naming the fix: env names, the production flag, CIDRs, the relay's architecture,
AWS profiles and an AWS API that does not answer, writes through symlinks."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ops import aws
from ops.config import ENVS_DIR, load_env, overlapping_envs, parse_env
from ops.errors import ConfigError, CredentialsError, OpsError
from ops.fileio import atomic_write

STAGING = (ENVS_DIR / "staging.toml").read_text()
PROD = (ENVS_DIR / "prod.toml").read_text()


def _parse(text: str, name: str = "x", folder: Path = Path("/tmp/envs")) -> object:
    return parse_env(name, text.encode(), folder / f"{name}.toml")


@pytest.mark.parametrize("name", ["prod\n", "prod\r", " prod", "prod ", "Prod", "-x", "a/b"])
def test_env_name_with_trailing_newline_or_junk_is_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="is invalid: use lowercase letters"):
        load_env(name)


def test_production_follows_the_flag_not_the_name() -> None:
    named_production = PROD.replace("deletion_protection = true", "deletion_protection = false")
    with pytest.raises(ConfigError, match=r"database.deletion_protection is false for a production environment"):
        _parse(named_production, name="production")
    with pytest.raises(ConfigError, match=r"database.deletion_protection is false for a production environment"):
        _parse(named_production, name="anything")
    assert not load_env("staging").is_prod and load_env("prod").is_prod and not load_env("sandbox").is_prod
    with pytest.raises(ConfigError, match=r"production must be true or false"):
        _parse(STAGING.replace("production = false", 'production = "no"'))


@pytest.mark.parametrize("cidr", ["169.254.0.0/16", "100.64.0.0/16", "198.18.0.0/16", "11.0.0.0/16"])
def test_only_rfc1918_ranges_and_the_message_says_so(cidr: str) -> None:
    with pytest.raises(ConfigError, match=r"network.vpc_cidr .* is not a private IPv4 range \(RFC 1918\); use a "
                                          r"range inside 10.0.0.0/8, 172.16.0.0/12 or 192.168.0.0/16"):
        _parse(STAGING.replace('vpc_cidr = "10.41.0.0/16"', f'vpc_cidr = "{cidr}"'))


@pytest.mark.parametrize("itype", ["t3.micro", "m6i.large", "t2.nano", "c5.xlarge"])
def test_x86_relay_type_is_refused_because_the_ami_is_arm64(itype: str) -> None:
    with pytest.raises(ConfigError, match=r"relay.instance_type = .* is not an arm64 \(Graviton\) type"):
        _parse(STAGING + f'\n[relay]\ninstance_type = "{itype}"\n')


@pytest.mark.parametrize("itype", ["t4g.nano", "m6gd.large", "c7gn.xlarge", "im4gn.large", "a1.medium"])
def test_graviton_relay_types_pass(itype: str) -> None:
    _parse(STAGING + f'\n[relay]\ninstance_type = "{itype}"\n')


def test_overlapping_vpc_cidr_gets_a_warning_naming_the_other_env(tmp_path: Path) -> None:
    (tmp_path / "staging.toml").write_text(STAGING)
    (tmp_path / "qa.toml").write_text(STAGING.replace('vpc_cidr = "10.41.0.0/16"', 'vpc_cidr = "10.41.0.0/18"'))
    (tmp_path / "other.toml").write_text(STAGING.replace('vpc_cidr = "10.41.0.0/16"', 'vpc_cidr = "10.50.0.0/16"'))
    warnings = overlapping_envs(load_env("qa", tmp_path), tmp_path)
    assert len(warnings) == 1 and "overlaps staging's '10.41.0.0/16'" in warnings[0]
    assert overlapping_envs(load_env("other", tmp_path), tmp_path) == []


def test_unknown_aws_profile_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile-xyz")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    with pytest.raises(CredentialsError) as err:
        aws.caller_identity(load_env("staging"))
    assert "AWS profile 'no-such-profile-xyz' does not exist" in err.value.message
    assert err.value.next_step.startswith("aws configure list-profiles")


@dataclass
class SilentApi:
    url: str
    held: list[socket.socket]


@pytest.fixture
def silent_api(real_io: None) -> Iterator[SilentApi]:
    """A TCP server that accepts and never answers: an AWS API that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield SilentApi(url=f"http://127.0.0.1:{server.getsockname()[1]}", held=held)
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_an_aws_api_that_does_not_answer_fails_in_seconds(silent_api: SilentApi,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", silent_api.url)
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_CONFIG_FILE", "/dev/null")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # The client must use our bounds, not botocore's (60 s reads, 3 attempts): shrunk here so the test does not
    # wait out 2 x 10 s; with botocore's defaults it would still take minutes and fail the bound below.
    real_read_timeout = aws.API_READ_TIMEOUT
    monkeypatch.setattr(aws, "API_READ_TIMEOUT", 1)
    started = time.monotonic()
    with pytest.raises(CredentialsError, match="did not answer within 1 s"):
        aws.caller_identity(load_env("staging"))
    took = time.monotonic() - started
    assert took < aws.API_ATTEMPTS * (aws.API_READ_TIMEOUT + aws.API_CONNECT_TIMEOUT) + 10, took
    assert len(silent_api.held) == aws.API_ATTEMPTS  # each attempt waited out its read timeout, then retried once
    assert aws.API_ATTEMPTS * (real_read_timeout + aws.API_CONNECT_TIMEOUT) <= 30  # the real bound: half a minute


def test_writes_through_a_symlink_update_the_target_and_keep_the_link(tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    target = dotfiles / "pg_service.conf"
    target.write_text("[old]\n")
    link = tmp_path / ".pg_service.conf"
    link.symlink_to(target)
    atomic_write(link, "[new]\n", mode=0o600)
    assert link.is_symlink() and link.resolve() == target
    assert target.read_text() == "[new]\n" and (target.stat().st_mode & 0o777) == 0o600
    assert sorted(p.name for p in dotfiles.iterdir()) == ["pg_service.conf"]  # no temp file left


@pytest.mark.parametrize("reason", ["INC-1\n2026-12-01 00:00:00Z  StartSession  arn:aws:iam::1:user/ceo",
                                    "ok\x1b[2K\x1b[1Afaked", "tab\there", "bell\x07", "c1\x9b31m"])
def test_reason_with_control_characters_is_refused(reason: str) -> None:
    from ops.inputs import InputError, check_reason

    with pytest.raises(InputError, match=r"--reason contains a control character") as err:
        check_reason(reason)
    assert "plain text" in err.value.next_step


def test_reason_plain_text_passes_even_starting_with_dashes() -> None:
    from ops.inputs import check_reason

    assert check_reason("--INC-1234: slow queries, ünïcode ok") == "--INC-1234: slow queries, ünïcode ok"


@pytest.mark.parametrize(("text", "expected"), [("", None), ("0", 0), ("5433", 5433), ("65535", 65535)])
def test_local_port_parses(text: str, expected: int | None) -> None:
    from ops.inputs import local_port

    assert local_port(text) == expected


@pytest.mark.parametrize("text", ["-1", "-5433", "65536", "99999", "54x", "1e3"])
def test_local_port_outside_the_range_is_one_error(text: str) -> None:
    from ops.inputs import InputError, local_port

    with pytest.raises(InputError, match=r"--local-port") as err:
        local_port(text)
    assert err.value.next_step == "use 0 (any free port) to 65535"


def test_aws_data_printed_in_tables_cannot_forge_rows() -> None:
    from datetime import UTC, datetime

    from ops import sessions
    from ops.sessions import SessionInfo

    forged = "x\n2026-01-01  StartSession  arn:aws:iam::1:user/ceo\x1b[0m"
    info = SessionInfo(session_id="s-1", target="i-1", owner="arn:aws:sts::1:assumed-role/dev/a",
                       started=datetime.now(UTC), ended=None, reason=forged, status="Connected", kind="relay")
    table = sessions.format_table([info])
    assert len(table.splitlines()) == 2
    assert "\x1b" not in table and "\\x1b[0m" in table and "\\n2026" in table


def test_state_dir_that_is_a_file_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.errors import OpsError

    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    monkeypatch.setenv("BASTIONLESS_STATE_DIR", str(blocker))
    with pytest.raises(OpsError, match="is a file, not a directory") as err:
        aws.state_dir()
    assert "BASTIONLESS_STATE_DIR" in err.value.next_step


def test_missing_psql_override_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ops.errors import ToolMissingError
    from ops.psql import psql_binary

    monkeypatch.setenv("BASTIONLESS_PSQL", str(tmp_path / "no-psql-here"))
    with pytest.raises(ToolMissingError, match="is not an executable file") as err:
        psql_binary()
    assert "unset it" in err.value.next_step


def test_downgrade_sql_without_a_range_is_one_line() -> None:
    from ops.errors import OpsError
    from ops.migrate import migrate

    with pytest.raises(OpsError, match=r"--sql for a downgrade needs a range FROM:TO, not '-1'") as err:
        migrate(load_env("sandbox"), revision="-1", downgrade=True, sql=True)
    assert "--revision 0003:0002" in err.value.next_step


@pytest.mark.usefixtures("real_io")
def test_migrate_status_with_a_broken_ini_is_one_line(tmp_path: Path) -> None:
    from ops.migrate import migration_status

    ini = tmp_path / "alembic.ini"
    ini.write_text("[alembic]\nthis is = not [ valid\n[[[\n")
    # Read by the project's interpreter (ops/alembic_launcher.py): one OpsError naming the ini and its source.
    with pytest.raises(OpsError, match=r"cannot read the revisions of .*alembic.ini \(from --ini") as err:
        migration_status(load_env("sandbox"), ini=str(ini))
    assert "script_location" in err.value.next_step


def test_secret_deleted_before_deploy_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a sandbox deploy does after apply (ops.sandbox.manager.master_credentials), in moto's in-process mock."""
    import boto3
    from moto import mock_aws

    from ops.errors import OpsError
    from ops.sandbox.manager import master_credentials

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_CONFIG_FILE", "/dev/null")):
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    cfg = load_env("staging")
    with mock_aws():
        sm = boto3.client("secretsmanager", region_name=cfg.region)
        arn = sm.create_secret(Name="rds!db-1", SecretString='{"username": "u", "password": "p"}')["ARN"]
        sm.delete_secret(SecretId=arn)  # scheduled for deletion, as a console click leaves it
        db = {"MasterUsername": "app_admin", "MasterUserSecret": {"SecretArn": arn}}
        with pytest.raises(OpsError, match="is deleted or scheduled for deletion") as err:
            master_credentials(cfg, db)
    assert "restore-secret" in err.value.next_step
