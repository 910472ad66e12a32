"""The production-operations settings of an env file: windows, Multi-AZ, alarms, patching, escalation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ops.config import ENVS_DIR, EnvConfig, parse_env
from ops.errors import ConfigError

PROD = (ENVS_DIR / "prod.toml").read_text()
STAGING = (ENVS_DIR / "staging.toml").read_text()


def _parse(text: str, name: str = "prod") -> EnvConfig:
    return parse_env(name, text.encode(), Path(f"/tmp/envs/{name}.toml"))


def _with_db(text: str, line: str) -> str:
    return text.replace("[database]\n", f"[database]\n{line}\n")


def test_multi_az_defaults_to_production_only_and_can_be_set() -> None:
    assert _parse(PROD).database.multi_az is True
    assert _parse(STAGING, "staging").database.multi_az is False
    assert _parse(_with_db(PROD, "multi_az = false")).database.multi_az is False
    assert _parse(_with_db(STAGING, "multi_az = true"), "staging").database.multi_az is True


@pytest.mark.parametrize(("line", "expected"), [
    ('backup_window = "04:30-05:30"', "database.maintenance_window overlaps backup_window"),
    ('backup_window = "23:50-00:40"\nmaintenance_window = "mon:00:10-mon:01:00"', "overlaps backup_window"),
    ('backup_window = "2am"', "database.backup_window = '2am' is not a window"),
    ('backup_window = "02:00-02:10"', "shorter than 30 minutes"),
    ('maintenance_window = "sunday 4am"', "database.maintenance_window = 'sunday 4am' is not a window"),
    ("max_allocated_storage_gb = 20", "database.max_allocated_storage_gb = 20 is not above"),
    ('ca_cert_identifier = "my-ca"', "database.ca_cert_identifier"),
    ("log_min_duration_ms = 0", "database.log_min_duration_ms"),
])
def test_database_operations_mistakes(line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"^/tmp/envs/prod\.toml: ") as err:
        _parse(_with_db(PROD, line))
    assert expected in str(err.value)


def test_windows_that_do_not_overlap_are_accepted() -> None:
    cfg = _parse(_with_db(PROD, 'backup_window = "22:00-23:00"\nmaintenance_window = "sat:23:30-sun:00:30"'))
    assert cfg.database.backup_window == "22:00-23:00"


def test_paging_url_never_in_the_file() -> None:
    text = PROD.replace('"/bastionless/prod/pager-url"', '"https://events.pagerduty.com/integration/abc/enqueue"')
    with pytest.raises(ConfigError, match="contains a URL \\(its integration key is a secret\\)"):
        _parse(text)


def test_production_needs_someone_to_page_and_an_escalation_list() -> None:
    no_subscribers = PROD.replace('email = ["oncall@example.com"]\n', "").replace(
        'https_endpoint_parameters = ["/bastionless/prod/pager-url"]\n', "")
    with pytest.raises(ConfigError, match="alarms has no email and no https_endpoint_parameters"):
        _parse(no_subscribers)
    start = PROD.index("[escalation]")
    with pytest.raises(ConfigError, match=re.escape("escalation.contacts is empty for a production environment")):
        _parse(PROD[:start])
    assert len(_parse(PROD).escalation.contacts) == 3


def test_alarm_and_patching_mistakes() -> None:
    with pytest.raises(ConfigError, match=re.escape("alarms.email contains 'oncall', not an email address")):
        _parse(PROD.replace('"oncall@example.com"', '"oncall"'))
    with pytest.raises(ConfigError, match=re.escape("patching.window_schedule = 'wednesdays'")):
        _parse(PROD.replace('"cron(0 3 ? * WED *)"', '"wednesdays"'))
    with pytest.raises(ConfigError, match=re.escape("alarms.free_storage_gb = 25 is out of range")):
        _parse(PROD.replace("[alarms]\n", "[alarms]\nfree_storage_gb = 25\n"))
