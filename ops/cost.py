"""Monthly cost estimate of an environment, from its config (no AWS calls).

Prices are AWS on-demand list prices for us-east-1 (USD), checked against the public price
pages in 2025; other regions differ (eu-west-1 is typically 5-15 % higher) and AWS changes
prices, so treat the figures as an order of magnitude for choosing between options, not a bill.
A month is 730 hours. Usage-based charges (data processed, log ingestion, API requests) are
listed per unit in the notes because they depend on traffic, not on the configuration.

Egress, the main choice per environment:
- `nat`: one NAT gateway is 0.045 USD/h (32.85/month) plus its public IPv4 address
  (0.005 USD/h, 3.65/month) and 0.045 USD per GB processed; `nat_per_az` multiplies by the AZs.
- `endpoints`: each interface endpoint costs 0.01 USD/h *per AZ* (7.30/month) plus 0.01 USD per
  GB. The often-quoted "3 endpoints ~22 USD/month" is ssm + ssmmessages + ec2messages in ONE AZ;
  our stack puts them in every AZ of the environment (2 by default), so 43.80/month. The S3
  gateway endpoint (package repositories) is free.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ops.config import EnvConfig

HOURS_PER_MONTH = 730
PRICE_REGION = "us-east-1"

# USD, us-east-1 on-demand list prices. Hourly unless the name says otherwise.
PRICES: dict[str, float] = {
    "nat_gateway_hour": 0.045,
    "nat_gateway_gb": 0.045,
    "public_ipv4_hour": 0.005,
    "interface_endpoint_az_hour": 0.01,
    "interface_endpoint_gb": 0.01,
    "kms_key_month": 1.00,
    "kms_10k_requests": 0.03,
    "secret_month": 0.40,
    "logs_ingest_gb": 0.50,
    "logs_storage_gb_month": 0.03,
    "ebs_gp3_gb_month": 0.08,
    "rds_gp3_gb_month": 0.115,
    "fargate_vcpu_hour": 0.04048,
    "fargate_gb_hour": 0.004445,
    "alarm_month": 0.10,
}
EC2_HOURLY: dict[str, float] = {
    "t4g.nano": 0.0042, "t4g.micro": 0.0084, "t4g.small": 0.0168, "t4g.medium": 0.0336,
    "t3.nano": 0.0052, "t3.micro": 0.0104, "t3.small": 0.0208, "t3a.nano": 0.0047,
}
# RDS for PostgreSQL, single-AZ.
RDS_HOURLY: dict[str, float] = {
    "db.t4g.micro": 0.016, "db.t4g.small": 0.032, "db.t4g.medium": 0.065, "db.t4g.large": 0.129,
    "db.t3.micro": 0.018, "db.t3.small": 0.036, "db.t3.medium": 0.072,
    "db.m7g.large": 0.168, "db.m6g.large": 0.159, "db.r7g.large": 0.239,
}
# stacks/network.py: kms and logs too, because sessions are KMS-encrypted and shell sessions logged.
INTERFACE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages", "kms", "logs")
# stacks/alarms.py: the CloudWatch metric alarms (CPU credits only on burstable db.t* classes).
METRIC_ALARMS = 4
# The optional sample Fargate service: the smallest task size.
SAMPLE_TASK_VCPU = 0.25
SAMPLE_TASK_GB = 0.5


@dataclass(frozen=True)
class CostLine:
    item: str
    detail: str
    usd_month: float | None  # None: priced per use, see the notes


@dataclass(frozen=True)
class CostEstimate:
    env: str
    region: str
    egress: str
    lines: tuple[CostLine, ...]
    alternatives: tuple[CostLine, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def total(self) -> float:
        return round(sum(line.usd_month or 0.0 for line in self.lines), 2)

    def to_json(self) -> str:
        data = asdict(self)
        data["total_usd_month"] = self.total
        return json.dumps(data, indent=2)


def _month(hourly: float, count: float = 1) -> float:
    return round(hourly * HOURS_PER_MONTH * count, 2)


def nat_monthly(gateways: int) -> float:
    """NAT gateways with their public IPv4 addresses, before data processing."""
    return _month(PRICES["nat_gateway_hour"] + PRICES["public_ipv4_hour"], gateways)


def endpoints_monthly(az_count: int, endpoints: int = len(INTERFACE_ENDPOINTS)) -> float:
    """Interface endpoints, each billed once per AZ it has a network interface in."""
    return _month(PRICES["interface_endpoint_az_hour"], endpoints * az_count)


def estimate(cfg: EnvConfig) -> CostEstimate:
    net = cfg.network
    lines: list[CostLine] = []
    notes: list[str] = []

    if net.egress == "nat":
        gateways = net.az_count if net.nat_per_az else 1
        lines.append(CostLine("NAT gateway", f"{gateways} x (gateway + public IPv4)", nat_monthly(gateways)))
        notes.append(f"NAT data processing: {PRICES['nat_gateway_gb']} USD per GB through the gateway")
    else:
        count = len(INTERFACE_ENDPOINTS)
        lines.append(CostLine("Interface endpoints", f"{count} ({', '.join(INTERFACE_ENDPOINTS)}) x {net.az_count} AZs",
                              endpoints_monthly(net.az_count)))
        lines.append(CostLine("S3 gateway endpoint", "for the relay's package updates", 0.0))
        notes.append(f"Endpoint data processing: {PRICES['interface_endpoint_gb']} USD per GB")
        notes.append(f"Interface endpoints bill per AZ: the often-quoted ~22 USD/month for ssm, ssmmessages and "
                     f"ec2messages is one AZ; this network has {net.az_count}")

    relay_type = cfg.relay.instance_type
    relay_hourly = EC2_HOURLY.get(relay_type)
    lines.append(CostLine("Relay instance", relay_type, _month(relay_hourly) if relay_hourly is not None else None))
    if relay_hourly is None:
        notes.append(f"Relay: no price on file for {relay_type}; see the EC2 price list")
    lines.append(CostLine("Relay root volume", f"{cfg.relay.root_volume_gb} GB gp3",
                          round(cfg.relay.root_volume_gb * PRICES["ebs_gp3_gb_month"], 2)))

    db = cfg.database
    db_hourly = RDS_HOURLY.get(db.instance_class)
    # Multi-AZ runs a standby of the same class and storage: twice the instance and storage price.
    copies = 2 if db.multi_az else 1
    lines.append(CostLine("RDS PostgreSQL", f"{db.instance_class}, {'Multi-AZ' if db.multi_az else 'single-AZ'}",
                          _month(db_hourly, copies) if db_hourly is not None else None))
    if db_hourly is None:
        notes.append(f"RDS: no price on file for {db.instance_class}; see the RDS price list")
    standby = " x 2 (Multi-AZ)" if db.multi_az else ""
    lines.append(CostLine("RDS storage", f"{db.allocated_storage_gb} GB gp3{standby}",
                          round(db.allocated_storage_gb * copies * PRICES["rds_gp3_gb_month"], 2)))
    if db.max_allocated_storage_gb:
        notes.append(f"RDS storage grows by itself up to {db.max_allocated_storage_gb} GB; each GB costs "
                     f"{PRICES['rds_gp3_gb_month'] * copies:.3f} USD/month")
    if db.multi_az:
        notes.append("Multi-AZ doubles the RDS instance and storage; set [database] multi_az = false to save it")
    lines.append(CostLine("Master user secret", "RDS-managed, Secrets Manager", PRICES["secret_month"]))
    lines.append(CostLine("KMS keys", "2 (sessions; database, its secret and logs), rotation on",
                          2 * PRICES["kms_key_month"]))
    alarms = METRIC_ALARMS + (1 if db.instance_class.startswith("db.t") else 0)
    lines.append(CostLine("CloudWatch alarms", f"{alarms}, standard resolution; SNS topic",
                          round(alarms * PRICES["alarm_month"], 2)))
    lines.append(CostLine("Session logs", f"CloudWatch Logs, {cfg.session.log_retention_days} days", None))
    notes.append(f"Logs: {PRICES['logs_ingest_gb']} USD per GB ingested, {PRICES['logs_storage_gb_month']} USD per "
                 "GB-month stored; port-forwarding sessions log little (only session events)")
    notes.append(f"KMS requests: {PRICES['kms_10k_requests']} USD per 10,000")
    notes.append(f"Backups up to the database size are free; retention {db.backup_retention_days} days")

    if cfg.ecs.enabled and cfg.ecs.sample_service:
        fargate = _month(PRICES["fargate_vcpu_hour"] * SAMPLE_TASK_VCPU + PRICES["fargate_gb_hour"] * SAMPLE_TASK_GB)
        size = f"{SAMPLE_TASK_VCPU} vCPU / {SAMPLE_TASK_GB} GB, always on"
        lines.append(CostLine("Sample Fargate task", size, fargate))
    elif cfg.ecs.enabled:
        lines.append(CostLine("ECS cluster", "no charge for the cluster itself", 0.0))

    alternatives = (
        CostLine("egress = \"endpoints\"", f"{len(INTERFACE_ENDPOINTS)} interface endpoints x {net.az_count} AZs",
                 endpoints_monthly(net.az_count)),
        CostLine("egress = \"nat\"", "1 NAT gateway", nat_monthly(1)),
        CostLine("egress = \"nat\", nat_per_az", f"{net.az_count} NAT gateways", nat_monthly(net.az_count)),
    )
    if cfg.sandbox:
        notes.insert(0, "This is the offline sandbox: it runs on your machine and costs nothing; the figures "
                        "show what the same configuration would cost in AWS")
    if cfg.region != PRICE_REGION:
        notes.insert(0, f"Prices are {PRICE_REGION} list prices; {cfg.region} differs (often 5-15 % higher)")
    return CostEstimate(cfg.name, cfg.region, net.egress, tuple(lines), alternatives, tuple(notes))


def format_table(est: CostEstimate) -> str:
    def money(value: float | None) -> str:
        return "per use" if value is None else f"{value:,.2f}"

    rows = [(line.item, line.detail, money(line.usd_month)) for line in est.lines]
    total_label = "Total (before usage charges)"
    width_item = max(len(total_label), *(len(r[0]) for r in rows), *(len(a.item) for a in est.alternatives))
    width_detail = max(len("Detail"), *(len(r[1]) for r in rows), *(len(a.detail) for a in est.alternatives))
    width_usd = max(len("USD/month"), *(len(r[2]) for r in rows), len(f"{est.total:,.2f}"))

    def row(a: str, b: str, c: str) -> str:
        return f"{a:<{width_item}}  {b:<{width_detail}}  {c:>{width_usd}}"

    rule = "-" * (width_item + width_detail + width_usd + 4)
    out = [f"Estimated monthly cost of {est.env} ({est.region}, egress = {est.egress}), USD, {PRICE_REGION} prices",
           "", row("Item", "Detail", "USD/month"), rule]
    out += [row(*r) for r in rows]
    out += [rule, row(total_label, "", f"{est.total:,.2f}"), "", "Egress options for this network:"]
    out += [row(a.item, a.detail, money(a.usd_month)) for a in est.alternatives]
    out += ["", "Notes:"]
    out += [f"- {note}" for note in est.notes]
    return "\n".join(out)
