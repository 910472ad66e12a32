"""The protocol code raises its own exceptions; the command line decides the words and the next step."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from invoke.exceptions import Exit

from cli._common import ops_errors, session_line
from ops.errors import OpsError
from ops.ssm import errors
from ops.ssm.channel import ChannelError
from ops.ssm.crypto import EncryptionError
from ops.ssm.framing import FramingError
from ops.ssm.smux import SmuxError
from tests.conftest import PROJECT_ROOT, parse_python


def test_ops_ssm_does_not_use_the_user_interface_errors() -> None:
    for path in sorted((PROJECT_ROOT / "ops" / "ssm").glob("*.py")):
        for node in ast.walk(parse_python(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "ops.errors", f"{path.name} imports ops.errors"
                assert not (node.module == "ops" and any(a.name == "errors" for a in node.names)), path.name


@pytest.mark.parametrize("kind", [FramingError, EncryptionError, SmuxError, ChannelError])
def test_every_protocol_failure_is_a_session_error_not_an_ops_error(kind: type[Exception]) -> None:
    assert issubclass(kind, errors.ProtocolError) and issubclass(kind, errors.SessionError)
    assert not issubclass(kind, OpsError)


@pytest.mark.parametrize(("exc", "next_step"), [
    (errors.EncryptionRequired("needs KMS"), "use --transport plugin"),
    (errors.KmsRefused("KMS refused a data key (k-1): AccessDenied", key_id="k-1"), "allow kms:GenerateDataKey"),
    (errors.WrongSessionType("s-1 is a Standard_Stream session"), "port-forwarding document"),
    (errors.ChannelClosed("cannot open the data channel websocket: refused", dropped=True), "invoke doctor"),
    (FramingError("payload digest mismatch"), "use --transport plugin and report"),
])
def test_the_cli_turns_a_session_error_into_one_line_with_a_next_step(exc: errors.SessionError,
                                                                      next_step: str) -> None:
    with pytest.raises(Exit) as info, ops_errors():
        raise exc
    assert info.value.code == 1
    line = str(info.value.message)
    assert line == session_line(exc)
    assert line.startswith(f"error: the Session Manager session failed: {exc.message}; next: ")
    assert next_step in line.split("; next: ", 1)[1]
    assert "\n" not in line


def test_the_websocket_tls_context_is_made_once_per_ca(tmp_path: Path) -> None:
    """Loading the system CA bundle costs tens of ms; every session of a pool and every resume paid it."""
    import os
    import shutil
    import ssl

    from ops.ssm import client

    assert client._tls_context("", 0.0) is client._tls_context("", 0.0)
    assert client._tls_context("", 0.0).verify_mode == ssl.CERT_REQUIRED
    ca = tmp_path / "ca.pem"
    shutil.copy(ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt", ca)
    first = client._tls_context(str(ca), client._mtime(str(ca)))
    assert client._tls_context(str(ca), client._mtime(str(ca))) is first
    os.utime(ca, (1, 1))  # a rebuilt sandbox CA: read again
    assert client._tls_context(str(ca), client._mtime(str(ca))) is not first
