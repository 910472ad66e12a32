"""The process-wide botocore data loader (ops.aws) reads the same models as botocore's own, as plain dicts."""

from __future__ import annotations

from collections import OrderedDict

import botocore.exceptions
import botocore.loaders
import botocore.session
import pytest

from ops import aws


@pytest.mark.parametrize(("service", "kind"), [("ec2", "service-2"), ("sts", "service-2"), ("rds", "paginators-1"),
                                               ("ssm", "endpoint-rule-set-1"), ("ecs", "waiters-2")])
def test_the_shared_loader_reads_what_botocores_reads(service: str, kind: str) -> None:
    # Fresh loaders: the process-wide one's data is botocore's to use (and adjust) once loaded.
    stock = botocore.loaders.create_loader()
    ours = aws._new_loader()
    got = ours.load_service_model(service, kind)
    assert got == stock.load_service_model(service, kind)
    assert type(got) is dict and not any(isinstance(v, OrderedDict) for v in got.values())
    # The order botocore's OrderedDicts kept (members, operations, rules) is kept too.
    assert list(got) == list(stock.load_service_model(service, kind))


def test_data_files_without_a_model_and_unknown_paths() -> None:
    loader = aws._new_loader()
    assert loader.load_data("endpoints") == botocore.loaders.create_loader().load_data("endpoints")
    assert loader.file_loader.load_file("/nonexistent/service-2") is None


def test_a_client_from_the_shared_loader_knows_its_operations() -> None:
    session = aws.new_session(region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE", aws_secret_access_key="x")
    assert aws._shared_loader() is aws._shared_loader()
    ec2 = session.client("ec2")
    stock = botocore.session.Session().create_client("ec2", region_name="us-east-1", aws_access_key_id="AKIDEXAMPLE",
                                                     aws_secret_access_key="x")
    model, want = (c.meta.service_model.operation_model("DescribeInstances") for c in (ec2, stock))
    assert list(model.input_shape.members) == list(want.input_shape.members)
    assert ec2.meta.service_model.operation_names == stock.meta.service_model.operation_names
    assert ec2.can_paginate("describe_instances")


@pytest.mark.parametrize("kind", ["service-2", "waiters-2", "endpoint-rule-set-1"])
def test_the_known_services_are_botocores_and_membership_agrees(kind: str) -> None:
    stock = botocore.loaders.create_loader().list_available_services(kind)
    known = aws._new_loader().list_available_services(kind)
    assert "ec2" in known and len(stock) > 150
    assert [name in known for name in stock] == [True] * len(stock)
    assert list(known) == stock and known[0] == stock[0] and len(known) == len(stock)
    others = {"nope", "", ".", "..", "ec2/2016-11-15", "../data/ec2", 3}
    assert not [name for name in others if name in known]


def test_an_unknown_service_is_refused_as_botocore_refuses_it() -> None:
    with pytest.raises(botocore.exceptions.UnknownServiceError) as ours:
        aws._new_loader().load_service_model("no-such-service", "service-2")
    with pytest.raises(botocore.exceptions.UnknownServiceError) as stock:
        botocore.loaders.create_loader().load_service_model("no-such-service", "service-2")
    assert str(ours.value) == str(stock.value)
