"""Alarms that page: one SNS topic per environment, its subscribers, and what publishes to it.

Every alarm's description names the runbook that answers it (`invoke runbook NAME`), so the page
itself says what to do; tests check that each named runbook exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from cdktf_cdktf_provider_aws.cloudwatch_metric_alarm import CloudwatchMetricAlarm
from cdktf_cdktf_provider_aws.data_aws_ssm_parameter import DataAwsSsmParameter
from cdktf_cdktf_provider_aws.db_event_subscription import DbEventSubscription
from cdktf_cdktf_provider_aws.sns_topic import SnsTopic
from cdktf_cdktf_provider_aws.sns_topic_policy import SnsTopicPolicy
from cdktf_cdktf_provider_aws.sns_topic_subscription import SnsTopicSubscription
from constructs import Construct

from ops.config import estimated_max_connections
from ops.facts import partition
from stacks.database import Database
from stacks.relay import Relay

GIB = 1024**3
# RDS event categories worth a page: the instance went away, failed over, ran out of storage, or failed.
RDS_EVENT_CATEGORIES = ("availability", "failover", "failure", "low storage", "recovery")


@dataclass(frozen=True)
class AlarmSpec:
    """What an alarm watches, in words, and the runbook that answers it."""

    construct_id: str
    summary: str
    runbook: str

    def description(self) -> str:
        return f"{self.summary}. Runbook: invoke runbook {self.runbook}"


RELAY_STATUS = AlarmSpec("RelayStatusCheckFailed", "The relay failed its EC2 status checks (instance or host) or "
                         "stopped reporting them (stopped, terminated); tunnels cannot open", "relay-unhealthy")
DB_STORAGE = AlarmSpec("DatabaseFreeStorageLow", "The database's free storage is low; writes fail when it is full",
                       "database-unhealthy")
DB_CREDITS = AlarmSpec("DatabaseCpuCreditsLow", "The database's CPU credit balance is low; it is about to be "
                       "throttled to its baseline", "database-unhealthy")
DB_CONNECTIONS = AlarmSpec("DatabaseConnectionsHigh", "The database is near its connection limit; new connections "
                           "will be refused", "database-unhealthy")
DB_MISSING = AlarmSpec("DatabaseNotReporting", "The database reports no metrics: it is stopped, rebooting, failing "
                       "over or otherwise not available", "database-unhealthy")
DB_EVENTS = AlarmSpec("DatabaseEvents", "RDS availability, failover, failure, low-storage or recovery event",
                      "database-unhealthy")
ALARM_SPECS = (RELAY_STATUS, DB_STORAGE, DB_CREDITS, DB_CONNECTIONS, DB_MISSING, DB_EVENTS)


def connections_threshold(instance_class: str) -> int:
    """80 % of the max_connections RDS derives from the class (config validation ensures it is known)."""
    limit = estimated_max_connections(instance_class)
    if limit is None:
        raise ValueError(f"no max_connections estimate for {instance_class}; set [alarms] connections")
    return limit * 8 // 10


class Alarms(Construct):
    """SNS topic + subscriptions; CloudWatch alarms on the relay and the database; RDS events.

    Not alarmed: an SSM agent that is not Online on a healthy instance (AWS publishes no metric or event
    for the agent's ping status); `invoke doctor` checks it.
    """

    topic: SnsTopic
    topic_policy: SnsTopicPolicy
    subscriptions: list[SnsTopicSubscription]
    metric_alarms: dict[str, CloudwatchMetricAlarm]
    database_events: DbEventSubscription

    def __init__(self, scope: Construct, construct_id: str, *, name: str, region: str, account_id: str,
                 relay: Relay, database: Database, instance_class: str, email: tuple[str, ...],
                 https_endpoint_parameters: tuple[str, ...], free_storage_gb: int, cpu_credit_balance: int,
                 connections: int) -> None:
        super().__init__(scope, construct_id)
        part = partition(region)
        self.topic = SnsTopic(self, "Topic", name=f"{name}-alarms", display_name=f"{name} alarms")
        owner = {"AWS": f"arn:{part}:iam::{account_id}:root"}
        statements = [
            {"Sid": "AccountManages", "Effect": "Allow", "Principal": owner, "Resource": self.topic.arn,
             "Action": ["sns:GetTopicAttributes", "sns:SetTopicAttributes", "sns:Subscribe",
                        "sns:ListSubscriptionsByTopic", "sns:Publish"]},
            {"Sid": "CloudWatchAlarms", "Effect": "Allow", "Principal": {"Service": "cloudwatch.amazonaws.com"},
             "Action": "sns:Publish", "Resource": self.topic.arn,
             "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}},
            {"Sid": "RdsEvents", "Effect": "Allow", "Principal": {"Service": "events.rds.amazonaws.com"},
             "Action": "sns:Publish", "Resource": self.topic.arn,
             "Condition": {"StringEquals": {"aws:SourceAccount": account_id}}},
        ]
        self.topic_policy = SnsTopicPolicy(self, "TopicPolicy", arn=self.topic.arn,
                                           policy=json.dumps({"Version": "2012-10-17", "Statement": statements}))
        self.subscriptions = [
            SnsTopicSubscription(self, f"Email{i + 1}", topic_arn=self.topic.arn, protocol="email", endpoint=address)
            for i, address in enumerate(email)]
        for i, parameter in enumerate(https_endpoint_parameters):
            # The URL carries the paging service's integration key: read at apply time, never in the synth output.
            url = DataAwsSsmParameter(self, f"PagerUrl{i + 1}", name=parameter, with_decryption=True)
            self.subscriptions.append(SnsTopicSubscription(
                self, f"Https{i + 1}", topic_arn=self.topic.arn, protocol="https", endpoint=url.value,
                endpoint_auto_confirms=True))

        actions = [self.topic.arn]
        db_dims = {"DBInstanceIdentifier": database.instance.identifier}

        def alarm(spec: AlarmSpec, *, namespace: str, metric: str, dimensions: dict[str, str], statistic: str,
                  comparison: str, threshold: float, periods: int, period: int = 300,
                  missing: str = "notBreaching") -> None:
            self.metric_alarms[spec.construct_id] = CloudwatchMetricAlarm(
                self, spec.construct_id, alarm_name=f"{name}-{spec.construct_id}",
                alarm_description=spec.description(), namespace=namespace, metric_name=metric,
                dimensions=dimensions, statistic=statistic, comparison_operator=comparison, threshold=threshold,
                period=period, evaluation_periods=periods, datapoints_to_alarm=periods,
                treat_missing_data=missing, alarm_actions=actions, ok_actions=actions)

        self.metric_alarms = {}
        # EC2 publishes status checks every minute even without detailed monitoring; none for 3 minutes means
        # the relay is stopped or gone (a relay-restart's stop and start takes less and does not page).
        alarm(RELAY_STATUS, namespace="AWS/EC2", metric="StatusCheckFailed",
              dimensions={"InstanceId": relay.instance.id}, statistic="Maximum",
              comparison="GreaterThanOrEqualToThreshold", threshold=1, periods=3, period=60, missing="breaching")
        alarm(DB_STORAGE, namespace="AWS/RDS", metric="FreeStorageSpace", dimensions=db_dims, statistic="Minimum",
              comparison="LessThanThreshold", threshold=free_storage_gb * GIB, periods=1)
        if instance_class.startswith("db.t"):
            alarm(DB_CREDITS, namespace="AWS/RDS", metric="CPUCreditBalance", dimensions=db_dims,
                  statistic="Minimum", comparison="LessThanThreshold", threshold=cpu_credit_balance, periods=2)
        alarm(DB_CONNECTIONS, namespace="AWS/RDS", metric="DatabaseConnections", dimensions=db_dims,
              statistic="Maximum", comparison="GreaterThanOrEqualToThreshold", threshold=connections, periods=2)
        # RDS publishes CPUUtilization every minute while the instance is available: silence means it is not.
        alarm(DB_MISSING, namespace="AWS/RDS", metric="CPUUtilization", dimensions=db_dims, statistic="SampleCount",
              comparison="LessThanThreshold", threshold=1, periods=5, period=60, missing="breaching")

        self.database_events = DbEventSubscription(
            self, DB_EVENTS.construct_id, name=f"{name}-database-events", sns_topic=self.topic.arn,
            source_type="db-instance", source_ids=[database.instance.identifier],
            event_categories=list(RDS_EVENT_CATEGORIES))
