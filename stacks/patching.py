"""The relay gets security fixes: Patch Manager in a maintenance window, and a current SSM agent.

Why in place rather than replacing the relay onto new AMIs: Amazon Linux 2023 pins its repositories
to the AMI's release, but `AWS-RunPatchBaseline` with the AL2023 default baseline installs the
security updates of the newer releases (it moves the release lock), so the instance stays patched
without a new AMI, and the relay is never replaced under open tunnels. A reboot (kernel updates) in
the window drops open tunnels for a minute; `invoke tunnel` reconnects by itself.

Targets are the relay's tags (`bastionless:role = relay`, `bastionless:env`), never an instance id:
a replaced relay is patched without a change here.
"""

from __future__ import annotations

from cdktf_cdktf_provider_aws.ssm_association import SsmAssociation, SsmAssociationTargets
from cdktf_cdktf_provider_aws.ssm_maintenance_window import SsmMaintenanceWindow
from cdktf_cdktf_provider_aws.ssm_maintenance_window_target import (
    SsmMaintenanceWindowTarget,
    SsmMaintenanceWindowTargetTargets,
)
from cdktf_cdktf_provider_aws.ssm_maintenance_window_task import (
    SsmMaintenanceWindowTask,
    SsmMaintenanceWindowTaskTargets,
    SsmMaintenanceWindowTaskTaskInvocationParameters,
    SsmMaintenanceWindowTaskTaskInvocationParametersRunCommandParameters,
    SsmMaintenanceWindowTaskTaskInvocationParametersRunCommandParametersParameter,
)
from constructs import Construct

from ops.facts import ENV_TAG, RELAY_ROLE, ROLE_TAG

PATCH_DOCUMENT = "AWS-RunPatchBaseline"
AGENT_DOCUMENT = "AWS-UpdateSSMAgent"


def relay_tags(env: str) -> dict[str, str]:
    """The tags the relay carries (stacks/relay.py) that patching targets: its role and env (not its Name)."""
    return {ROLE_TAG: RELAY_ROLE, ENV_TAG: env}


class Patching(Construct):
    """Maintenance window installing patches; daily patch scan (for doctor); agent update association.

    `emulator=True` (the sandbox) creates the window only: moto 5.2.5 answers a filtered
    DescribeMaintenanceWindowTargets with nothing, has no GetMaintenanceWindowTask and no
    associations, so Terraform could not read those back. Synth tests cover them.
    """

    window: SsmMaintenanceWindow
    window_target: SsmMaintenanceWindowTarget | None
    install_task: SsmMaintenanceWindowTask | None
    scan: SsmAssociation | None
    agent_update: SsmAssociation | None

    def __init__(self, scope: Construct, construct_id: str, *, name: str, env: str, window_schedule: str,
                 window_hours: int, agent_update_schedule: str, emulator: bool) -> None:
        super().__init__(scope, construct_id)
        tags = relay_tags(env)
        self.window = SsmMaintenanceWindow(
            self, "Window", name=f"{name}-relay-patching", schedule=window_schedule, schedule_timezone="Etc/UTC",
            duration=window_hours, cutoff=1, allow_unassociated_targets=False,
            description="Security updates for the relay (AWS-RunPatchBaseline, reboot if needed)")
        self.window_target = self.install_task = self.scan = self.agent_update = None
        if emulator:
            return
        self.window_target = SsmMaintenanceWindowTarget(
            self, "WindowTarget", window_id=self.window.id, name="relay", resource_type="INSTANCE",
            targets=[SsmMaintenanceWindowTargetTargets(key=f"tag:{k}", values=[v]) for k, v in tags.items()])
        self.install_task = SsmMaintenanceWindowTask(
            self, "InstallTask", window_id=self.window.id, name="install-patches", task_type="RUN_COMMAND",
            task_arn=PATCH_DOCUMENT, priority=1, max_concurrency="1", max_errors="0",
            targets=[SsmMaintenanceWindowTaskTargets(key="WindowTargetIds", values=[self.window_target.id])],
            task_invocation_parameters=SsmMaintenanceWindowTaskTaskInvocationParameters(
                run_command_parameters=SsmMaintenanceWindowTaskTaskInvocationParametersRunCommandParameters(
                    timeout_seconds=3600,
                    parameter=[
                        SsmMaintenanceWindowTaskTaskInvocationParametersRunCommandParametersParameter(
                            name="Operation", values=["Install"]),
                        SsmMaintenanceWindowTaskTaskInvocationParametersRunCommandParametersParameter(
                            name="RebootOption", values=["RebootIfNeeded"]),
                    ])))
        association_targets = [SsmAssociationTargets(key=f"tag:{k}", values=[v]) for k, v in tags.items()]
        # A daily scan keeps the patch compliance data fresh: `invoke doctor` reports it.
        self.scan = SsmAssociation(
            self, "PatchScan", name=PATCH_DOCUMENT, association_name=f"{name}-relay-patch-scan",
            schedule_expression="rate(1 day)", targets=association_targets, parameters={"Operation": "Scan"},
            compliance_severity="HIGH")
        self.agent_update = SsmAssociation(
            self, "AgentUpdate", name=AGENT_DOCUMENT, association_name=f"{name}-relay-agent-update",
            schedule_expression=agent_update_schedule, targets=association_targets, compliance_severity="HIGH")
