"""The AWS provider and the Terraform state backend of one environment."""

from __future__ import annotations

from cdktf import LocalBackend, S3Backend, TerraformBackend, TerraformStack
from cdktf_cdktf_provider_aws.provider import AwsProvider, AwsProviderDefaultTags

from ops.config import EnvConfig


def default_tags(cfg: EnvConfig) -> dict[str, str]:
    return {"environment": cfg.name, "project": "bastionless", "managed-by": "cdktf"}


def configure_provider(stack: TerraformStack, *, cfg: EnvConfig) -> AwsProvider:
    """Region, account guard and tags. The sandbox adds only the "do not phone AWS" switches.

    Endpoints and keys for the sandbox are never written here: the runner injects AWS_ENDPOINT_URL
    and fake keys into terraform's environment, so the same JSON cannot reach a real account by accident.
    """
    sandbox: dict[str, object] = {}
    if cfg.sandbox:
        sandbox = {
            "skip_credentials_validation": True,
            "skip_metadata_api_check": "true",
            "skip_region_validation": True,
            # The account id is still requested (from the emulator's STS) so allowed_account_ids is enforced.
            "skip_requesting_account_id": False,
        }
    return AwsProvider(
        stack, "aws",
        region=cfg.region,
        allowed_account_ids=[cfg.account_id],
        default_tags=[AwsProviderDefaultTags(tags=default_tags(cfg))],
        **sandbox,  # type: ignore[arg-type]
    )


# S3-native state locking (`use_lockfile`) arrived in Terraform 1.10; ops/terraform.py's MIN_TERRAFORM agrees.
REQUIRED_TERRAFORM = ">= 1.10"


def configure_backend(stack: TerraformStack, *, cfg: EnvConfig) -> TerraformBackend:
    """S3 with native S3 locking per environment; a local backend whose path ops/terraform.py passes in."""
    stack.add_override("terraform.required_version", REQUIRED_TERRAFORM)
    if cfg.state.backend == "local":
        local = LocalBackend(stack)
        # cdktf fills in an absolute path of this machine; the runner passes the real one at init.
        local.add_override("path", None)
        return local
    backend = S3Backend(
        stack,
        bucket=cfg.state.bucket,
        key=cfg.state.key,
        region=cfg.state.region or cfg.region,
        encrypt=True,
    )
    # cdktf 0.21 predates `use_lockfile` (Terraform 1.10+ S3-native locking, no DynamoDB table).
    backend.add_override("use_lockfile", True)
    return backend


