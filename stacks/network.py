"""VPC with public, private-with-egress and isolated subnets per AZ; egress via NAT or interface endpoints."""

from __future__ import annotations

import json
from typing import Any

from cdktf import Fn
from cdktf_cdktf_provider_aws.data_aws_availability_zones import DataAwsAvailabilityZones
from cdktf_cdktf_provider_aws.default_security_group import DefaultSecurityGroup
from cdktf_cdktf_provider_aws.eip import Eip
from cdktf_cdktf_provider_aws.internet_gateway import InternetGateway
from cdktf_cdktf_provider_aws.nat_gateway import NatGateway
from cdktf_cdktf_provider_aws.route import Route
from cdktf_cdktf_provider_aws.route_table import RouteTable
from cdktf_cdktf_provider_aws.route_table_association import RouteTableAssociation
from cdktf_cdktf_provider_aws.security_group import SecurityGroup
from cdktf_cdktf_provider_aws.security_group_rule import SecurityGroupRule
from cdktf_cdktf_provider_aws.subnet import Subnet
from cdktf_cdktf_provider_aws.vpc import Vpc
from cdktf_cdktf_provider_aws.vpc_endpoint import VpcEndpoint
from constructs import Construct

from ops.config import EgressMode, subnet_plan

# What the SSM agent needs to reach Systems Manager without internet access. Our session preferences
# always encrypt sessions with KMS and stream shell sessions (ECS Exec, an admin shell) to CloudWatch
# Logs, so the agent also calls kms and logs: without these two, those sessions fail in this mode.
INTERFACE_ENDPOINTS = ("ssm", "ssmmessages", "ec2messages", "kms", "logs")
# Per endpoint, what the relay's agent calls through it (its role allows the same, stacks/relay.py);
# ec2messages carries the agent's message polling, which it keeps doing even with Run Command unused.
ENDPOINT_ACTIONS = {
    "ssm": ["ssm:UpdateInstanceInformation", "ssm:ListInstanceAssociations", "ssm:DescribeInstanceProperties"],
    "ssmmessages": ["ssmmessages:CreateControlChannel", "ssmmessages:CreateDataChannel",
                    "ssmmessages:OpenControlChannel", "ssmmessages:OpenDataChannel"],
    "ec2messages": ["ec2messages:GetMessages", "ec2messages:AcknowledgeMessage", "ec2messages:DeleteMessage",
                    "ec2messages:FailMessage", "ec2messages:GetEndpoint", "ec2messages:SendReply"],
    # The session key (encrypted sessions) and the session log group (shell sessions, ECS Exec).
    "kms": ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"],
    "logs": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogGroups", "logs:DescribeLogStreams"],
}


def interface_endpoint_policy(service: str, *, account_id: str) -> dict[str, Any]:
    """Only our account's principals, only the agent's actions: stolen credentials of another account, or
    any other API, cannot use the endpoint to leave the VPC."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "RelayAgentOnly", "Effect": "Allow", "Principal": {"AWS": "*"},
        "Action": ENDPOINT_ACTIONS[service], "Resource": "*",
        "Condition": {"StringEquals": {"aws:PrincipalAccount": account_id}},
    }]}


def s3_endpoint_policy(region: str) -> dict[str, Any]:
    """Reads from the Amazon Linux 2023 repositories and the SSM agent's own buckets (updates), nothing else:
    not any bucket in any account."""
    buckets = [f"al2023-repos-{region}-de612dc2", f"amazon-ssm-{region}", f"aws-ssm-{region}",
               f"amazon-ssm-packages-{region}"]
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "PackageAndAgentRepositoriesOnly", "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
        "Resource": [f"arn:aws:s3:::{b}/*" for b in buckets],
    }]}


class Network(Construct):
    """Per AZ: a private /24 (egress via NAT or endpoints), an isolated /24, and with NAT a public /24 (IGW)."""

    vpc: Vpc
    public_subnets: list[Subnet]
    private_subnets: list[Subnet]
    isolated_subnets: list[Subnet]
    private_route_tables: list[RouteTable]
    isolated_route_table: RouteTable
    nat_gateways: list[NatGateway]
    # Only in `endpoints` mode: the interface endpoints' security group and the endpoints.
    endpoint_security_group: SecurityGroup | None
    interface_endpoints: dict[str, VpcEndpoint]
    s3_endpoint: VpcEndpoint | None

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, cidr: str,
                 az_count: int, egress: EgressMode, nat_per_az: bool, account_id: str = "") -> None:
        super().__init__(scope, construct_id)
        self.name = name
        self.egress = egress
        plan = subnet_plan(cidr, az_count)
        azs = DataAwsAvailabilityZones(self, "Zones", state="available")

        self.vpc = Vpc(self, "Vpc", cidr_block=cidr, enable_dns_support=True, enable_dns_hostnames=True,
                       tags={"Name": name})
        # The default security group would allow all traffic between its members: keep it empty.
        DefaultSecurityGroup(self, "DefaultSecurityGroup", vpc_id=self.vpc.id, tags={"Name": f"{name}-default"})
        # Only NAT needs a way out: in `endpoints` mode there is no internet gateway, no public subnet and
        # no 0.0.0.0/0 route anywhere in the VPC.
        has_internet = egress == "nat"
        igw = InternetGateway(self, "InternetGateway", vpc_id=self.vpc.id, tags={"Name": name}) if has_internet \
            else None
        public_rt = None
        if igw is not None:
            public_rt = RouteTable(self, "PublicRouteTable", vpc_id=self.vpc.id, tags={"Name": f"{name}-public"})
            Route(self, "PublicDefaultRoute", route_table_id=public_rt.id, destination_cidr_block="0.0.0.0/0",
                  gateway_id=igw.id)
        # No route out: the database tier.
        self.isolated_route_table = RouteTable(self, "IsolatedRouteTable", vpc_id=self.vpc.id,
                                               tags={"Name": f"{name}-isolated"})

        self.public_subnets, self.private_subnets, self.isolated_subnets = [], [], []
        self.private_route_tables, self.nat_gateways = [], []
        for i in range(az_count):
            az = Fn.element(azs.names, i)
            n = i + 1
            if public_rt is not None:
                public = Subnet(self, f"PublicSubnet{n}", vpc_id=self.vpc.id, cidr_block=plan["public"][i],
                                availability_zone=az, map_public_ip_on_launch=False,
                                tags={"Name": f"{name}-public-{n}", "bastionless:tier": "public"})
                RouteTableAssociation(self, f"PublicRouteAssoc{n}", subnet_id=public.id,
                                      route_table_id=public_rt.id)
                self.public_subnets.append(public)
            private = Subnet(self, f"PrivateSubnet{n}", vpc_id=self.vpc.id, cidr_block=plan["private"][i],
                             availability_zone=az, tags={"Name": f"{name}-private-{n}", "bastionless:tier": "private"})
            isolated = Subnet(self, f"IsolatedSubnet{n}", vpc_id=self.vpc.id, cidr_block=plan["isolated"][i],
                              availability_zone=az,
                              tags={"Name": f"{name}-isolated-{n}", "bastionless:tier": "isolated"})
            private_rt = RouteTable(self, f"PrivateRouteTable{n}", vpc_id=self.vpc.id,
                                    tags={"Name": f"{name}-private-{n}"})
            RouteTableAssociation(self, f"PrivateRouteAssoc{n}", subnet_id=private.id,
                                  route_table_id=private_rt.id)
            RouteTableAssociation(self, f"IsolatedRouteAssoc{n}", subnet_id=isolated.id,
                                  route_table_id=self.isolated_route_table.id)
            self.private_subnets.append(private)
            self.isolated_subnets.append(isolated)
            self.private_route_tables.append(private_rt)

        if egress == "nat":
            gateways = az_count if nat_per_az else 1
            for i in range(gateways):
                n = i + 1
                eip = Eip(self, f"NatEip{n}", domain="vpc", tags={"Name": f"{name}-nat-{n}"})
                self.nat_gateways.append(NatGateway(self, f"NatGateway{n}", allocation_id=eip.id,
                                                    subnet_id=self.public_subnets[i].id,
                                                    tags={"Name": f"{name}-nat-{n}"},
                                                    depends_on=[igw] if igw is not None else None))
            for i, rt in enumerate(self.private_route_tables):
                gw = self.nat_gateways[i if nat_per_az else 0]
                Route(self, f"PrivateDefaultRoute{i + 1}", route_table_id=rt.id,
                      destination_cidr_block="0.0.0.0/0", nat_gateway_id=gw.id)

        self.endpoint_security_group = None
        self.interface_endpoints = {}
        self.s3_endpoint = None
        if egress == "endpoints":
            # Ingress is added per client (allow_endpoint_clients): 443 from the relay's SG only.
            self.endpoint_security_group = SecurityGroup(
                self, "EndpointSecurityGroup", name=f"{name}-endpoints", vpc_id=self.vpc.id,
                description="Interface endpoints for Systems Manager: HTTPS from the relay only",
                tags={"Name": f"{name}-endpoints"})
            for service in INTERFACE_ENDPOINTS:
                self.interface_endpoints[service] = VpcEndpoint(
                    self, f"{service.capitalize()}Endpoint", vpc_id=self.vpc.id,
                    service_name=f"com.amazonaws.{region}.{service}", vpc_endpoint_type="Interface",
                    private_dns_enabled=True, subnet_ids=[s.id for s in self.private_subnets],
                    security_group_ids=[self.endpoint_security_group.id], tags={"Name": f"{name}-{service}"},
                    policy=json.dumps(interface_endpoint_policy(service, account_id=account_id)))
            # Gateway endpoint (free): the relay still reaches the Amazon Linux repositories (S3) to patch.
            self.s3_endpoint = VpcEndpoint(
                self, "S3Endpoint", vpc_id=self.vpc.id, service_name=f"com.amazonaws.{region}.s3",
                vpc_endpoint_type="Gateway", route_table_ids=[rt.id for rt in self.private_route_tables],
                tags={"Name": f"{name}-s3"}, policy=json.dumps(s3_endpoint_policy(region)))

    def allow_endpoint_clients(self, construct_id: str, *, client: SecurityGroup, description: str) -> None:
        """Let `client` reach the interface endpoints on 443 (no-op in NAT mode)."""
        if self.endpoint_security_group is None:
            return
        SecurityGroupRule(self, construct_id, type="ingress", security_group_id=self.endpoint_security_group.id,
                          protocol="tcp", from_port=443, to_port=443, source_security_group_id=client.id,
                          description=description)
