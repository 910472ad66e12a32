"""The sandbox's moto decodes each service's botocore model once (ops/sandbox/moto.py, _one_model_loader)."""

from __future__ import annotations

import botocore.loaders
import pytest
from moto.core import utils
from moto.core.base_backend import AccountSpecificBackend

from ops.sandbox import moto

# A service no other test of this worker asks moto about, so no cache holds its model yet.
SERVICE = "glacier"


def test_moto_and_the_region_list_share_one_decoded_model(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded: list[str] = []
    original = botocore.loaders.JSONFileLoader.load_file

    def counting(self: botocore.loaders.JSONFileLoader, file_path: str) -> object:
        decoded.append(file_path)
        return original(self, file_path)

    monkeypatch.setattr(botocore.loaders.JSONFileLoader, "load_file", counting)
    monkeypatch.setattr(utils, "create_loader", utils.create_loader)  # put back after the test
    moto._one_model_loader()
    model = utils._load_service_model(SERVICE, "service-2")  # what moto's responses parse requests with
    regions = AccountSpecificBackend.get_session().get_available_regions(SERVICE)  # moto's region list
    assert model["metadata"]["endpointPrefix"] == SERVICE and "us-east-1" in regions
    service_models = [p for p in decoded if p.endswith("service-2")]
    assert len(service_models) == 1, f"the {SERVICE} model was decoded {len(service_models)} times: {decoded}"
