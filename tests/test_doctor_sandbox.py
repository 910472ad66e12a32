"""doctor against a healthy emulated environment, then with one thing broken at a time.

Each break is undone in `finally`, so the module's environment is healthy again for the next test.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from ops import facts
from ops.doctor import CheckResult, format_json, format_table, run_checks
from tests.ecs_support import TASK_IDS, EcsWorld, sandbox_task
from tests.ssm_support import relay_image

pytest_plugins = ["tests.ecs_fixtures"]


pytestmark = pytest.mark.slow


def fails(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results if r.status == "fail"}


def test_healthy_environment_has_no_fail_and_only_honest_warns(ecs_world: EcsWorld,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # CI puts AWS's plugin 1.2.650.0 (../shared/tools) on PATH, older than doctor's minimum, which doctor
    # rightly warns about; this test is about the environment, not about the machine's plugin.
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                               if not os.path.exists(os.path.join(p, "session-manager-plugin"))))
    results = run_checks(ecs_world.cfg)
    assert not fails(results), format_table(results)
    warns = [r for r in results if r.status == "warn"]
    # The only warns: what the emulator lacks (the IAM policy simulator, patch states, certificate expiry),
    # said so, in the sandbox only; and the agent version our local agent announces, which is honestly older
    # than the security floor.
    emulator_gaps = {"ssm:StartSession": "SimulatePrincipalPolicy", "ecs:ExecuteCommand": "SimulatePrincipalPolicy",
                     "relay patches": "DescribeInstancePatchStates"}
    assert {r.name for r in warns} == {*emulator_gaps, "database CA", "relay agent security fixes"}
    for r in warns:
        if r.name in emulator_gaps:
            assert "not checkable here" in r.detail and emulator_gaps[r.name] in r.detail
    by_name = {r.name: r for r in results}
    assert "reports no certificate expiry" in by_name["database CA"].detail
    assert "rds-ca-rsa2048-g1" in by_name["database CA"].detail
    assert f"older than {facts.MIN_AGENT_SECURITY}" in by_name["relay agent security fixes"].detail
    names = {r.name for r in results if r.status == "pass"}
    for expected in ("credentials", "account", "relay SSM ping", "endpoint ssmmessages", "database secret",
                     "session key", "you may use the session key", "cluster exec logging", "relay SG egress",
                     "relay instance profile", "VPC DNS", "endpoint kms", "endpoint logs", "preferences"):
        assert expected in names
    payload = json.loads(format_json(results))
    assert payload["ok"] is True
    assert len(payload["checks"]) == len(results)


def test_secret_values_never_reach_the_output(ecs_world: EcsWorld) -> None:
    secret = ecs_world.moto("secretsmanager").get_secret_value(SecretId=ecs_world.ids["secret"])
    password = json.loads(secret["SecretString"])
    text = format_table(run_checks(ecs_world.cfg))
    assert password["password"] not in text


@contextmanager
def broken(undo: object) -> Iterator[None]:
    try:
        yield
    finally:
        assert callable(undo)
        undo()


def test_relay_stopped(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    relay = ecs_world.ids["relay"]
    ec2.stop_instances(InstanceIds=[relay])
    with broken(lambda: ec2.start_instances(InstanceIds=[relay])):
        results = run_checks(ecs_world.cfg)
    found = fails(results)
    assert set(found) == {"relay running"}
    skipped = {r.name: r.detail for r in results if r.status == "warn" and r.section == "relay"}
    assert skipped == {"relay SSM ping": "not checked: the relay is stopped",
                       "relay agent version": "not checked: the relay is stopped"}
    assert f"start-instances --instance-ids {relay}" in found["relay running"].fix
    assert "is stopped" in found["relay running"].detail


def test_database_sg_rule_removed(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    perm = [{"IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432,
             "UserIdGroupPairs": [{"GroupId": ecs_world.ids["relay_sg"]}]}]
    ec2.revoke_security_group_ingress(GroupId=ecs_world.ids["db_sg"], IpPermissions=perm)
    with broken(lambda: ec2.authorize_security_group_ingress(GroupId=ecs_world.ids["db_sg"], IpPermissions=perm)):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"database SG 5432 from relay"}
    fix = found["database SG 5432 from relay"].fix
    assert f"--group-id {ecs_world.ids['db_sg']}" in fix and f"--source-group {ecs_world.ids['relay_sg']}" in fix


def test_secret_deleted(ecs_world: EcsWorld) -> None:
    sm = ecs_world.moto("secretsmanager")
    arn = ecs_world.ids["secret"]
    sm.delete_secret(SecretId=arn, RecoveryWindowInDays=7)
    with broken(lambda: sm.restore_secret(SecretId=arn)):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"database secret"}
    assert "restore-secret" in found["database secret"].fix


def test_secret_malformed(ecs_world: EcsWorld) -> None:
    sm = ecs_world.moto("secretsmanager")
    arn = ecs_world.ids["secret"]
    original = sm.get_secret_value(SecretId=arn)["SecretString"]
    sm.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "app_admin"}))
    with broken(lambda: sm.put_secret_value(SecretId=arn, SecretString=original)):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"database secret"}
    assert "missing: password" in found["database secret"].detail
    assert "rotate-secret" in found["database secret"].fix


def test_exec_disabled_on_the_service(ecs_world: EcsWorld) -> None:
    ecs = ecs_world.moto("ecs")
    svc = ecs_world.ids["service"]
    ecs.update_service(cluster=ecs_world.ids["cluster"], service=svc, enableExecuteCommand=False)
    with broken(lambda: ecs.update_service(cluster=ecs_world.ids["cluster"], service=svc, enableExecuteCommand=True)):
        found = fails(run_checks(ecs_world.cfg))
    # The running task keeps exec (it was started before): only the service is wrong.
    assert set(found) == {f"{svc} exec enabled"}
    assert "--enable-execute-command --force-new-deployment" in found[f"{svc} exec enabled"].fix


def test_task_started_without_exec(ecs_world: EcsWorld) -> None:
    task = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                        task_def=ecs_world.ids["task_def"],
                        tid=TASK_IDS[1], enableExecuteCommand=False)
    task["containers"][0]["managedAgents"] = []
    ecs_world.write_tasks([task])
    with broken(ecs_world.write_tasks):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {f"task {TASK_IDS[1][:12]} exec"}
    assert "only applies to tasks started after it" in found[f"task {TASK_IDS[1][:12]} exec"].fix


def test_interface_endpoint_removed(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    ec2.delete_vpc_endpoints(VpcEndpointIds=[ecs_world.ids["ep_ssmmessages"]])

    def recreate() -> None:
        reservations = ec2.describe_instances(InstanceIds=[ecs_world.ids["relay"]])["Reservations"]
        subnet = reservations[0]["Instances"][0]["SubnetId"]
        ecs_world.ids["ep_ssmmessages"] = ec2.create_vpc_endpoint(
            VpcId=ecs_world.ids["vpc"], ServiceName="com.amazonaws.us-east-1.ssmmessages", VpcEndpointType="Interface",
            SubnetIds=[subnet], SecurityGroupIds=[ecs_world.ids["ep_sg"]], PrivateDnsEnabled=True,
        )["VpcEndpoint"]["VpcEndpointId"]

    with broken(recreate):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"endpoint ssmmessages"}
    assert "invoke deploy --env sandbox" in found["endpoint ssmmessages"].fix


def test_readonly_root_filesystem_and_pid_mode(ecs_world: EcsWorld) -> None:
    ecs = ecs_world.moto("ecs")
    family = f"{ecs_world.ids['cluster']}-sample"
    td = ecs.register_task_definition(
        family=family, taskRoleArn=ecs_world.ids["task_role"], networkMode="awsvpc",
        requiresCompatibilities=["FARGATE"],
        cpu="256", memory="512", pidMode="task", containerDefinitions=[{
            "name": "app", "image": "busybox", "essential": True, "readonlyRootFilesystem": True,
            "environment": [{"name": "AWS_ACCESS_KEY_ID", "value": "AKIAEXAMPLE"}]}],
    )["taskDefinition"]
    ecs_world.write_tasks([sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                                    task_def=td["taskDefinitionArn"], tid=TASK_IDS[1])])
    label = f"{family}:{td['revision']}"
    with broken(ecs_world.write_tasks):
        results = run_checks(ecs_world.cfg)
    assert set(fails(results)) == {f"{label} app root filesystem"}
    warned = {r.name for r in results if r.status == "warn"}
    assert {f"{label} app init process", f"{label} pidMode", f"{label} app credentials env"} <= warned


def test_task_role_without_ssmmessages(ecs_world: EcsWorld) -> None:
    iam = ecs_world.moto("iam")
    role = f"{ecs_world.ids['cluster']}-ecs-task"
    original = iam.get_role_policy(RoleName=role, PolicyName="inline")["PolicyDocument"]
    narrowed = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["ssmmessages:CreateControlChannel", "ssmmessages:OpenControlChannel",
                                       "logs:*", "kms:Decrypt"], "Resource": "*"}]}
    iam.put_role_policy(RoleName=role, PolicyName="inline", PolicyDocument=json.dumps(narrowed))
    doc = original if isinstance(original, str) else json.dumps(original)
    with broken(lambda: iam.put_role_policy(RoleName=role, PolicyName="inline", PolicyDocument=doc)):
        found = fails(run_checks(ecs_world.cfg))
    name = f"{ecs_world.ids['cluster']}-sample:1 task role ssmmessages"
    assert set(found) == {name}
    assert "ssmmessages:CreateDataChannel" in found[name].detail
    assert "ssmmessages:OpenDataChannel" in found[name].detail


def test_doctor_cli_exit_code_and_json(ecs_world: EcsWorld) -> None:
    from invoke.exceptions import Exit

    from cli.doctor import doctor

    ec2 = ecs_world.moto("ec2")
    ec2.stop_instances(InstanceIds=[ecs_world.ids["relay"]])
    try:
        with pytest.raises(Exit) as info:
            doctor.body(None, env="sandbox", json=True)
    finally:
        ec2.start_instances(InstanceIds=[ecs_world.ids["relay"]])
    assert info.value.code == 1


def test_ec2_task_on_an_old_ecs_agent_and_a_pending_task(ecs_world: EcsWorld) -> None:
    ec2, ecs = ecs_world.moto("ec2"), ecs_world.moto("ecs")
    image = relay_image(ec2)
    host = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    doc = json.dumps({"instanceId": host, "region": "us-east-1", "accountId": "123456789012"})
    container_instance = ecs.register_container_instance(
        cluster=ecs_world.ids["cluster"], instanceIdentityDocument=doc)["containerInstance"]
    agent = container_instance["versionInfo"]["agentVersion"]  # moto registers every agent as 1.0.0
    ec2_task = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                            task_def=ecs_world.ids["task_def"],
                            tid=TASK_IDS[1], launchType="EC2", containerInstanceArn=container_instance[
                                "containerInstanceArn"])
    pending = sandbox_task(cluster=ecs_world.ids["cluster"], service=ecs_world.ids["service"],
                           task_def=ecs_world.ids["task_def"],
                           tid=TASK_IDS[0], lastStatus="PENDING")
    ecs_world.write_tasks([pending, ec2_task])
    try:
        results = run_checks(ecs_world.cfg)
    finally:
        ecs_world.write_tasks()
        ecs.deregister_container_instance(cluster=ecs_world.ids["cluster"],
                                          containerInstance=container_instance["containerInstanceArn"], force=True)
        ec2.terminate_instances(InstanceIds=[host])
    found = fails(results)
    (name,) = found
    assert name.startswith("container instance") and f"ECS agent {agent} is older than 1.50.2" in found[name].detail
    status = {r.name: r for r in results if r.name == f"task {TASK_IDS[0][:12]} status"}
    assert status[f"task {TASK_IDS[0][:12]} status"].status == "warn"


def test_nat_egress_needs_a_route_out(ecs_world: EcsWorld) -> None:
    cfg = dataclasses.replace(ecs_world.cfg, network=dataclasses.replace(ecs_world.cfg.network, egress="nat"))
    ec2 = ecs_world.moto("ec2")
    relay = ec2.describe_instances(InstanceIds=[ecs_world.ids["relay"]])["Reservations"][0]["Instances"][0]
    table = ec2.create_route_table(VpcId=ecs_world.ids["vpc"])["RouteTable"]["RouteTableId"]
    assoc = ec2.associate_route_table(RouteTableId=table, SubnetId=relay["SubnetId"])["AssociationId"]
    public = ec2.create_subnet(VpcId=ecs_world.ids["vpc"], CidrBlock="10.40.0.0/24")["Subnet"]["SubnetId"]
    eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
    nat = ec2.create_nat_gateway(SubnetId=public, AllocationId=eip)["NatGateway"]["NatGatewayId"]
    try:
        without = {r.name: r for r in run_checks(cfg) if r.section == "network"}
        ec2.create_route(RouteTableId=table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat)
        with_route = {r.name: r for r in run_checks(cfg) if r.section == "network"}
    finally:
        ec2.disassociate_route_table(AssociationId=assoc)
        ec2.delete_route_table(RouteTableId=table)
        ec2.delete_nat_gateway(NatGatewayId=nat)
    assert set(without) == {"VPC DNS", "route out"} and without["route out"].status == "fail"
    assert without["VPC DNS"].status == "pass"
    assert "no active 0.0.0.0/0 route" in without["route out"].detail
    assert with_route["route out"].status == "pass" and nat in with_route["route out"].detail


# ---- production operations: each new check finds its thing broken ----------------------------------


def test_relay_security_group_egress_removed(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    sg = ecs_world.ids["relay_sg"]
    everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
    ec2.revoke_security_group_egress(GroupId=sg, IpPermissions=everything)
    with broken(lambda: ec2.authorize_security_group_egress(GroupId=sg, IpPermissions=everything)):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"relay SG egress"}
    assert "allows no outbound TCP 443 or 5432" in found["relay SG egress"].detail
    assert found["relay SG egress"].fix.startswith("invoke deploy --env sandbox")


def test_relay_instance_profile_without_its_role(ecs_world: EcsWorld) -> None:
    iam = ecs_world.moto("iam")
    profile, role = f"{ecs_world.cfg.stack_name}-relay", f"{ecs_world.cfg.stack_name}-relay"
    iam.remove_role_from_instance_profile(InstanceProfileName=profile, RoleName=role)
    with broken(lambda: iam.add_role_to_instance_profile(InstanceProfileName=profile, RoleName=role)):
        results = run_checks(ecs_world.cfg)
    found = fails(results)
    assert set(found) == {"relay instance profile"}
    assert "cannot register with Systems Manager" in found["relay instance profile"].detail
    assert "AmazonSSMManagedInstanceCore" in found["relay instance profile"].fix


def test_vpc_dns_hostnames_off(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    vpc = ecs_world.ids["vpc"]
    ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": False})
    with broken(lambda: ec2.modify_vpc_attribute(VpcId=vpc, EnableDnsHostnames={"Value": True})):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"VPC DNS"}
    assert "enableDnsHostnames off" in found["VPC DNS"].detail
    assert f"modify-vpc-attribute --vpc-id {vpc} --enable-dns-hostnames" in found["VPC DNS"].fix


def test_kms_endpoint_missing_in_endpoints_mode(ecs_world: EcsWorld) -> None:
    ec2 = ecs_world.moto("ec2")
    ep = ec2.describe_vpc_endpoints(VpcEndpointIds=[ecs_world.ids["ep_kms"]])["VpcEndpoints"][0]
    ec2.delete_vpc_endpoints(VpcEndpointIds=[ecs_world.ids["ep_kms"]])

    def recreate() -> None:
        ecs_world.ids["ep_kms"] = ec2.create_vpc_endpoint(
            VpcId=ecs_world.ids["vpc"], ServiceName=ep["ServiceName"], VpcEndpointType="Interface",
            SubnetIds=ep["SubnetIds"], SecurityGroupIds=[ecs_world.ids["ep_sg"]], PrivateDnsEnabled=True,
        )["VpcEndpoint"]["VpcEndpointId"]

    with broken(recreate):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"endpoint kms"}
    assert "no com.amazonaws.us-east-1.kms interface endpoint" in found["endpoint kms"].detail


def test_preferences_changed_in_the_console(ecs_world: EcsWorld) -> None:
    ssm = ecs_world.moto("ssm")
    name = "SSM-SessionManagerRunShell"
    original = ssm.get_document(Name=name, DocumentFormat="JSON")
    changed = json.loads(original["Content"])
    # What the console writes when someone "just" raises the idle timeout and turns logging off.
    changed["inputs"].update({"idleSessionTimeout": "60", "cloudWatchLogGroupName": ""})
    new = ssm.update_document(Name=name, Content=json.dumps(changed), DocumentVersion="$LATEST",
                              DocumentFormat="JSON")["DocumentDescription"]["DocumentVersion"]
    ssm.update_document_default_version(Name=name, DocumentVersion=new)
    with broken(lambda: ssm.update_document_default_version(Name=name, DocumentVersion=original["DocumentVersion"])):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"preferences"}
    detail = found["preferences"].detail
    assert "changed outside the stack" in detail and "idleSessionTimeout = '60' (stack: '20')" in detail
    assert "cloudWatchLogGroupName = ''" in detail
    assert "invoke runbook sessions-fail-relay-online" in found["preferences"].fix


def test_database_ca_not_the_pinned_one(ecs_world: EcsWorld) -> None:
    rds = ecs_world.moto("rds")
    ident = ecs_world.cfg.stack_name
    rds.modify_db_instance(DBInstanceIdentifier=ident, CACertificateIdentifier="rds-ca-2019", ApplyImmediately=True)
    with broken(lambda: rds.modify_db_instance(DBInstanceIdentifier=ident, ApplyImmediately=True,
                                               CACertificateIdentifier=ecs_world.cfg.database.ca_cert_identifier)):
        found = fails(run_checks(ecs_world.cfg))
    assert set(found) == {"database CA"}
    assert "uses CA rds-ca-2019; sandbox.toml pins rds-ca-rsa2048-g1" in found["database CA"].detail


def test_relay_patches_with_patching_turned_off(ecs_world: EcsWorld) -> None:
    cfg = dataclasses.replace(ecs_world.cfg, patching=dataclasses.replace(ecs_world.cfg.patching, enabled=False))
    found = {r.name: r for r in run_checks(cfg)}["relay patches"]
    assert found.status == "warn" and "patching is off" in found.detail and "enabled = true" in found.fix
