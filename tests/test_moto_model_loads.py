"""The sandbox's moto decodes each botocore data file once (ops/sandbox/moto.py, _one_model_loader)."""

from __future__ import annotations

import boto3
import botocore.loaders
import botocore.session
import pytest

# A service no other test of this worker asks botocore about, so no loader holds its model yet.
SERVICE = "glacier"


def test_moto_and_every_session_share_one_decoded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Here, not at the top: moto's import is ~0.1 s of every xdist worker's collection.
    from moto.core import utils

    from ops.sandbox import moto

    decoded: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def counting(self: botocore.loaders.JSONFileLoader, file_path: str) -> object:
        decoded.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counting)
    # Put back after the test what _one_model_loader replaces.
    monkeypatch.setattr(utils, "create_loader", utils.create_loader)
    monkeypatch.setattr(botocore.session, "create_loader", botocore.session.create_loader)
    moto._one_model_loader()
    model = utils._load_service_model(SERVICE, "service-2")  # what moto's responses parse requests with
    # moto's region lists: a session of its own, and new ones (moto.ec2 makes one when imported).
    for _ in range(2):
        assert "us-east-1" in boto3.session.Session().get_available_regions(SERVICE)
    assert model["metadata"]["endpointPrefix"] == SERVICE
    service_models = [p for p in decoded if p.endswith("service-2")]
    assert len(service_models) == 1, f"the {SERVICE} model was decoded {len(service_models)} times: {decoded}"
    assert len([p for p in decoded if p.endswith("endpoints")]) <= 1
