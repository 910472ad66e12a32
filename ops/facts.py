"""The facts that the stacks, the operations and the sandbox must agree on, each in one place.

A relay tag, a document name or an output name written twice drifts apart silently: the stack tags
the relay one way and discovery looks for another, and only a deployed environment shows it. So
everything here is imported, never copied. This module imports nothing first-party (stacks/, ops/,
ops/ssm, the sandbox and the tests all depend on it).
"""

from __future__ import annotations

# ---- the relay instance, found by its tags (stacks/relay.py sets them, ops/discovery.py reads them)
ENV_TAG = "bastionless:env"
ROLE_TAG = "bastionless:role"
RELAY_ROLE = "relay"


def relay_name(stack_name: str) -> str:
    """The relay's Name tag (also what the console shows)."""
    return f"{stack_name}/TunnelInstance"


def relay_tags(*, stack_name: str, env: str) -> dict[str, str]:
    return {"Name": relay_name(stack_name), ENV_TAG: env, ROLE_TAG: RELAY_ROLE}


# ---- Session Manager documents
# The AWS-owned document every tunnel starts (IAM allows exactly this one on the relay).
PORT_DOCUMENT = "AWS-StartPortForwardingSessionToRemoteHost"
# Port forwarding to the instance itself; the agent treats it like PORT_DOCUMENT.
LOCAL_PORT_DOCUMENT = "AWS-StartPortForwardingSession"
# Account-wide Session Manager preferences (log group, KMS key, timeouts); bastionless creates it.
PREFERENCES_DOCUMENT = "SSM-SessionManagerRunShell"
# What ECS Exec sessions run (the service starts it for ecs:ExecuteCommand).
ECS_EXEC_DOCUMENT = "AWS-StartInteractiveCommand"

# ---- per-person database identities (stacks/db_identity.py, ops/sandbox/identities.py, ops/sandbox/rds_front.py)
# The principal tag that names a person's DB user: the ABAC key of rds-db:connect and of sts:TagSession trust.
DB_USER_TAG = "db_user"

# The env that `invoke sandbox` and the demo use when none is named (envs/sandbox.toml).
SANDBOX_ENV = "sandbox"

# The sandbox's RDS front (ops/sandbox/rds_front.py): its CA, under the state dir, is what clients verify the
# sandbox database with (the auth proxy, and libpq with sslmode = "verify-full" and no ca_bundle set).
RDS_FRONT_DIR = "rds-front"
RDS_FRONT_CA = "rds-sandbox-ca.pem"

# ---- stack outputs: the Terraform output names (stacks/outputs.py creates exactly these, in order)
OUTPUT_NAMES = ("relay_instance_id", "relay_security_group_id", "db_identifier", "db_address", "db_port", "db_name",
                "db_username", "db_secret_arn", "session_log_group", "session_kms_key_arn", "developer_role_arn",
                "developer_policy_json", "ecs_cluster_name", "vpc_id")

# ---- SSM agent and session-manager-plugin versions (read from their sources; dotted, compared numerically)
# Remote-host port forwarding (PORT_DOCUMENT) exists in agents from this version on.
MIN_AGENT_REMOTE_HOST = "3.1.1374.0"
# The relay's agent should be at least this new for its security fixes (doctor warns below it): 3.3.1957.0
# fixed the April 2025 path traversal in plugin-id handling, 3.3.2299.0 CVE-2025-22869, 3.3.3050.0
# CVE-2025-22871 and CVE-2025-22872 (the versions the ECS-optimized AMIs moved to for those fixes).
MIN_AGENT_SECURITY = "3.3.3050.0"
# Agents newer than this multiplex port sessions with smux (for clients >= MUX_CLIENT_VERSION).
MUX_AFTER_AGENT = "3.0.196.0"
MUX_CLIENT_VERSION = "1.1.70"
# Agents newer than this drop the smux keep-alive for clients newer than NO_KEEPALIVE_CLIENT_AFTER.
NO_KEEPALIVE_AFTER_AGENT = "3.1.1511.0"
NO_KEEPALIVE_CLIENT_AFTER = "1.2.331.0"
# Agents newer than this understand the client's TerminateSession flag.
TERMINATE_FLAG_AFTER_AGENT = "2.3.722.0"
# The plugin version our native client announces (recent enough for smux without keep-alive).
CLIENT_VERSION = "1.2.764.0"
# Plugins up to this version take the StartSession answer in argv; newer ones from the environment.
LAST_PLUGIN_WITHOUT_ENV = "1.2.497.0"
# The version the sandbox's agent reports unless told otherwise.
SANDBOX_AGENT_VERSION = "3.3.1142.0"


def partition(region: str) -> str:
    """The ARN partition of a region (aws, aws-cn, aws-us-gov)."""
    if region.startswith("cn-"):
        return "aws-cn"
    if region.startswith("us-gov-"):
        return "aws-us-gov"
    return "aws"


# ---- files in the sandbox's state dir that its manager, endpoint and agent all read or write
RELAY_HOSTS_FILE = "relay_hosts.json"  # the relay's view of the VPC: emulated host:port -> loopback host:port
ECS_TASKS_FILE = "ecs_tasks.json"  # the ECS sample service's tasks (the endpoint's ListTasks/DescribeTasks)
SESSIONS_FILE = "sessions.json"  # the endpoint's sessions and their events (DescribeSessions, the audit trail)
# The sandbox's long-lived AWS provider: how terraform reattaches to it (ops/sandbox/provider_server.py).
PROVIDER_SERVER_FILE = "provider_server.json"


# ---- environment variables bastionless reads (names only; see the README for what each does)
STATE_DIR_ENV = "BASTIONLESS_STATE_DIR"
# Where env files are read from (default: the project's envs/): test worlds point CLI children at their own.
ENVS_DIR_ENV = "BASTIONLESS_ENVS_DIR"
ENVS_ENV = "BASTIONLESS_ENVS"
SYNTH_MANIFEST_ENV = "BASTIONLESS_SYNTH_MANIFEST"
PROVIDER_MIRROR_ENV = "BASTIONLESS_PROVIDER_MIRROR"
TERRAFORM_ENV = "BASTIONLESS_TERRAFORM"
PLUGIN_ENV = "BASTIONLESS_SESSION_MANAGER_PLUGIN"
PSQL_ENV = "BASTIONLESS_PSQL"
PG_BIN_ENV = "BASTIONLESS_PG_BIN"
STOCK_IMPORT_ENV = "BASTIONLESS_STOCK_IMPORT"
RDS_SHORTCUT_ENV = "BASTIONLESS_SANDBOX_RDS_SHORTCUT"
PROVIDER_SERVER_ENV = "BASTIONLESS_SANDBOX_PROVIDER_SERVER"
SANDBOX_SECRET_ENV = "BASTIONLESS_SANDBOX_SECRET"  # noqa: S105 - the name of a variable, not a secret
SANDBOX_AGENT_VERSION_ENV = "BASTIONLESS_SANDBOX_AGENT_VERSION"
TUNNEL_PHASE_DELAY_ENV = "BASTIONLESS_TUNNEL_PHASE_DELAY"
# A pool of Session Manager sessions behind one tunnel port (`--sessions`, [tunnel] sessions): more than
# this many is more load on the relay's agent than any dump needs.
MAX_TUNNEL_SESSIONS = 16
