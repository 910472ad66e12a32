"""`invoke cost`: the estimate follows the environment's configuration and reconciles the quoted figures."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import pytest

from ops.config import DatabaseConfig, EcsConfig, NetworkConfig, RelayConfig, load_env
from ops.cost import HOURS_PER_MONTH, PRICES, endpoints_monthly, estimate, format_table, nat_monthly
from tests.conftest import PROJECT_ROOT


def _items(est: object) -> dict[str, float | None]:
    return {line.item: line.usd_month for line in est.lines}  # type: ignore[attr-defined]


def test_quoted_figures_reconcile() -> None:
    # The docs quote "NAT ~32 USD/month vs 3 endpoints ~22 USD/month": one gateway-hour price, and
    # three endpoints in ONE AZ. Endpoints bill per AZ, so two AZs double them.
    assert round(PRICES["nat_gateway_hour"] * HOURS_PER_MONTH, 2) == 32.85
    assert endpoints_monthly(1, 3) == 21.9
    assert endpoints_monthly(2, 3) == 43.8
    # Our endpoints mode adds kms and logs (encrypted, logged sessions): five per AZ.
    assert endpoints_monthly(1) == 36.5
    assert nat_monthly(1) == 36.5, "gateway plus its public IPv4 address"


def test_endpoints_environment() -> None:
    est = estimate(load_env("prod"))
    items = _items(est)
    assert items["Interface endpoints"] == endpoints_monthly(2)
    assert items["S3 gateway endpoint"] == 0.0
    assert "NAT gateway" not in items
    assert items["Relay instance"] == round(0.0042 * HOURS_PER_MONTH, 2)
    # prod is Multi-AZ by default: a standby of the same class and storage.
    assert items["RDS PostgreSQL"] == round(0.032 * HOURS_PER_MONTH * 2, 2)
    assert items["RDS storage"] == round(20 * 2 * PRICES["rds_gp3_gb_month"], 2)
    assert items["KMS keys"] == 2.0
    assert items["CloudWatch alarms"] == 0.5, "5 alarms, CPU credits included for db.t4g"
    assert items["Session logs"] is None, "usage-priced, explained in the notes"
    assert est.total == round(sum(v for v in items.values() if v), 2)
    assert any("eu-west-1 differs" in n for n in est.notes), "prices are us-east-1; the region is named"


def test_nat_environment_and_per_az_gateways() -> None:
    staging = load_env("staging")
    assert _items(estimate(staging))["NAT gateway"] == nat_monthly(1)
    per_az = replace(staging, network=NetworkConfig(vpc_cidr="10.41.0.0/16", az_count=3, egress="nat",
                                                    nat_per_az=True))
    est = estimate(per_az)
    assert _items(est)["NAT gateway"] == nat_monthly(3)
    assert "Interface endpoints" not in _items(est)
    assert any("NAT data processing" in n for n in est.notes)


def test_configuration_drives_the_figures() -> None:
    prod = load_env("prod")
    bigger = replace(prod, relay=RelayConfig(instance_type="t4g.small"),
                     database=replace(prod.database, instance_class="db.t4g.medium", allocated_storage_gb=100),
                     network=replace(prod.network, az_count=3))
    items = _items(estimate(bigger))
    assert items["Relay instance"] == round(0.0168 * HOURS_PER_MONTH, 2)
    assert items["RDS PostgreSQL"] == round(0.065 * HOURS_PER_MONTH * 2, 2)
    assert items["RDS storage"] == round(100 * 2 * PRICES["rds_gp3_gb_month"], 2)
    assert items["Interface endpoints"] == endpoints_monthly(3)


def test_multi_az_doubles_instance_and_storage_and_can_be_turned_off() -> None:
    prod = load_env("prod")
    assert prod.database.multi_az is True, "production environments default to Multi-AZ"
    assert load_env("staging").database.multi_az is False
    single = replace(prod, database=replace(prod.database, multi_az=False))
    multi, one = _items(estimate(prod)), _items(estimate(single))
    assert multi["RDS PostgreSQL"] == 2 * one["RDS PostgreSQL"]  # type: ignore[operator]
    assert multi["RDS storage"] == 2 * one["RDS storage"]  # type: ignore[operator]
    detail = {line.item: line.detail for line in estimate(prod).lines}["RDS PostgreSQL"]
    assert "Multi-AZ" in detail
    assert "single-AZ" in {line.item: line.detail for line in estimate(single).lines}["RDS PostgreSQL"]


def test_unknown_instance_class_is_not_guessed() -> None:
    prod = load_env("prod")
    odd = replace(prod, database=DatabaseConfig(instance_class="db.x2g.16xlarge", ca_bundle="x"))
    est = estimate(odd)
    assert _items(est)["RDS PostgreSQL"] is None
    assert any("no price on file for db.x2g.16xlarge" in n for n in est.notes)


def test_sample_fargate_service_is_priced_only_when_enabled() -> None:
    sandbox = load_env("sandbox")
    assert "Sample Fargate task" in _items(estimate(sandbox))
    off = replace(sandbox, ecs=EcsConfig(enabled=True, sample_service=False))
    assert "Sample Fargate task" not in _items(estimate(off))
    assert any("offline sandbox" in n for n in estimate(sandbox).notes)


def test_table_lists_every_line_the_total_and_the_alternatives() -> None:
    est = estimate(load_env("prod"))
    table = format_table(est)
    for line in est.lines:
        assert line.item in table
    assert f"{est.total:,.2f}" in table
    assert 'egress = "nat"' in table and 'egress = "endpoints"' in table
    assert "per AZ" in table


@pytest.mark.usefixtures("real_io")
@pytest.mark.parametrize("args", [["cost", "--env", "staging"], ["cost", "--env", "staging", "--json"]])
def test_cost_task(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    if "--json" in args:
        data = json.loads(proc.stdout)
        assert data["env"] == "staging" and data["egress"] == "nat"
        assert data["total_usd_month"] == estimate(load_env("staging")).total
    else:
        assert "Estimated monthly cost of staging" in proc.stdout
        assert "NAT gateway" in proc.stdout
