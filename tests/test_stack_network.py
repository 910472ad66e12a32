"""Network construct: VPC, three subnet tiers per AZ, egress by NAT or interface endpoints."""

from __future__ import annotations

from typing import Any

from ops.config import load_env
from tests.stack_fixtures import (
    one,
    ref,
    resources,
)


def test_vpc_cidr_and_dns(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        vpc = one(doc, "aws_vpc", "Network/Vpc")
        assert vpc["cidr_block"] == load_env(name).network.vpc_cidr
        assert vpc["enable_dns_support"] is True and vpc["enable_dns_hostnames"] is True


def test_three_tiers_per_az_with_the_planned_cidrs(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        cfg = load_env(name)
        plan = cfg.subnet_cidrs()
        subnets = resources(doc, "aws_subnet")
        tiers = (("public", "Public"), ("private", "Private"), ("isolated", "Isolated"))
        if cfg.network.egress == "endpoints":
            tiers = tiers[1:]  # no public tier without NAT
        assert len(subnets) == len(tiers) * cfg.network.az_count
        for tier, prefix in tiers:
            got = [subnets[f"Network/{prefix}Subnet{i + 1}"]["cidr_block"] for i in range(cfg.network.az_count)]
            assert got == plan[tier]
            assert all(c.endswith("/24") for c in got)
        azs = {s["availability_zone"] for s in subnets.values()}
        assert len(azs) == cfg.network.az_count, "each AZ index maps to a distinct zone"


def test_public_route_to_igw_isolated_has_no_route_out(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        routes = resources(doc, "aws_route")
        if load_env(name).network.egress == "nat":
            public = routes["Network/PublicDefaultRoute"]
            assert public["destination_cidr_block"] == "0.0.0.0/0"
            assert public["gateway_id"] == ref(doc, "aws_internet_gateway", "Network/InternetGateway")
        isolated_rt = ref(doc, "aws_route_table", "Network/IsolatedRouteTable")
        assert not [r for r in routes.values() if r["route_table_id"] == isolated_rt]
        assert "route" not in one(doc, "aws_route_table", "Network/IsolatedRouteTable")
        assocs = resources(doc, "aws_route_table_association")
        iso = [a for p, a in assocs.items() if p.startswith("Network/IsolatedRouteAssoc")]
        assert iso and all(a["route_table_id"] == isolated_rt for a in iso)


def test_endpoints_mode(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["prod"]
    assert load_env("prod").network.egress == "endpoints"
    assert not resources(doc, "aws_nat_gateway")
    eps = resources(doc, "aws_vpc_endpoint")
    sg = ref(doc, "aws_security_group", "Network/EndpointSecurityGroup")
    private = [ref(doc, "aws_subnet", f"Network/PrivateSubnet{i}") for i in (1, 2)]
    # kms and logs too: sessions are KMS-encrypted and shell sessions (ECS Exec) stream to CloudWatch Logs.
    for service in ("ssm", "ssmmessages", "ec2messages", "kms", "logs"):
        ep = eps[f"Network/{service.capitalize()}Endpoint"]
        assert ep["service_name"] == f"com.amazonaws.eu-west-1.{service}"
        assert ep["vpc_endpoint_type"] == "Interface" and ep["private_dns_enabled"] is True
        assert ep["subnet_ids"] == private and ep["security_group_ids"] == [sg]
    s3 = eps["Network/S3Endpoint"]
    assert s3["vpc_endpoint_type"] == "Gateway" and s3["service_name"] == "com.amazonaws.eu-west-1.s3"
    assert sorted(s3["route_table_ids"]) == sorted(
        ref(doc, "aws_route_table", f"Network/PrivateRouteTable{i}") for i in (1, 2))
    assert one(doc, "aws_security_group", "Network/EndpointSecurityGroup")["name"] == "bastionless-prod-endpoints"
    # 443 only, only from the relay's security group.
    ingress = [r for r in resources(doc, "aws_security_group_rule").values()
               if r["security_group_id"] == sg]
    assert ingress and all(r["type"] == "ingress" and r["from_port"] == r["to_port"] == 443 for r in ingress)
    assert {r["source_security_group_id"] for r in ingress} == {
        ref(doc, "aws_security_group", "Relay/SecurityGroup")}
    assert not any("cidr_blocks" in r for r in ingress)


def test_nat_mode_one_gateway_routes_every_private_subnet(synthesized: dict[str, dict[str, Any]]) -> None:
    doc = synthesized["staging"]
    cfg = load_env("staging")
    assert cfg.network.egress == "nat" and not cfg.network.nat_per_az
    nats = resources(doc, "aws_nat_gateway")
    assert list(nats) == ["Network/NatGateway1"]
    assert nats["Network/NatGateway1"]["subnet_id"] == ref(doc, "aws_subnet", "Network/PublicSubnet1")
    assert not resources(doc, "aws_vpc_endpoint")
    routes = resources(doc, "aws_route")
    for i in (1, 2):
        r = routes[f"Network/PrivateDefaultRoute{i}"]
        assert r["nat_gateway_id"] == ref(doc, "aws_nat_gateway", "Network/NatGateway1")
        assert r["route_table_id"] == ref(doc, "aws_route_table", f"Network/PrivateRouteTable{i}")


def test_default_security_group_is_emptied(synthesized: dict[str, dict[str, Any]]) -> None:
    for doc in synthesized.values():
        default = one(doc, "aws_default_security_group", "Network/DefaultSecurityGroup")
        assert "ingress" not in default and "egress" not in default


def test_endpoints_mode_has_no_way_to_the_internet(synthesized: dict[str, dict[str, Any]]) -> None:
    for name in ("prod", "sandbox"):
        doc = synthesized[name]
        assert load_env(name).network.egress == "endpoints"
        assert not resources(doc, "aws_internet_gateway")
        assert not [p for p in resources(doc, "aws_subnet") if "Public" in p]
        assert not [r for r in resources(doc, "aws_route").values() if r.get("destination_cidr_block") == "0.0.0.0/0"]
        for table in resources(doc, "aws_route_table").values():
            assert "route" not in table


def test_endpoint_policies_allow_only_what_the_relay_needs(synthesized: dict[str, dict[str, Any]]) -> None:
    import json

    doc = synthesized["prod"]
    cfg = load_env("prod")
    eps = resources(doc, "aws_vpc_endpoint")
    for service in ("ssm", "ssmmessages", "ec2messages"):
        (stmt,) = json.loads(eps[f"Network/{service.capitalize()}Endpoint"]["policy"])["Statement"]
        assert stmt["Condition"] == {"StringEquals": {"aws:PrincipalAccount": cfg.account_id}}
        assert all(a.startswith(f"{service}:") and "*" not in a for a in stmt["Action"])
    (s3,) = json.loads(eps["Network/S3Endpoint"]["policy"])["Statement"]
    assert s3["Action"] == "s3:GetObject"
    assert s3["Resource"][0] == f"arn:aws:s3:::al2023-repos-{cfg.region}-de612dc2/*"
    assert all(r.startswith("arn:aws:s3:::") and r.endswith("/*") and "*" not in r[:-2] for r in s3["Resource"])


def test_flow_logs_on_for_production_envs_only(synthesized: dict[str, dict[str, Any]]) -> None:
    for name, doc in synthesized.items():
        logs = resources(doc, "aws_flow_log")
        if not load_env(name).is_prod:
            assert logs == {}
            continue
        flow = logs["FlowLogs/FlowLog"]
        assert flow["traffic_type"] == "ALL" and flow["vpc_id"] == ref(doc, "aws_vpc", "Network/Vpc")
        assert flow["log_destination"] == ref(doc, "aws_cloudwatch_log_group", "FlowLogs/LogGroup", "arn")
        group = one(doc, "aws_cloudwatch_log_group", "FlowLogs/LogGroup")
        assert group["kms_key_id"] == ref(doc, "aws_kms_key", "FlowLogs/Key", "arn")
        assert group["retention_in_days"] == load_env(name).session.log_retention_days
