"""The emulator answers each request in one write, as AWS does (ops.sandbox.moto.request_handler).

werkzeug sends a response's headers and body separately; under load the AWS provider's Go client closed
the connection between the two and repeated calls moto had already applied (InvalidPermission.Duplicate on
a second concurrent sandbox deploy). A SOCK_SEQPACKET pair keeps each send a record of its own, so the
test sees how many writes an answer took; no IP socket, no process.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest

from ops.sandbox.moto import request_handler

BODY = b"<DescribeSecurityGroupsResponse>" + b"x" * 2000 + b"</DescribeSecurityGroupsResponse>"
REQUEST = (b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
           b"Content-Length: 31\r\n\r\nAction=DescribeSecurityGroups&x")


def records_of_one_answer(handler_class: type[Any], body: bytes = BODY) -> list[bytes]:
    """Serve REQUEST with `handler_class` on one end of the pair; the records the other end receives."""
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
        start_response("200 OK", [("Content-Type", "text/xml"), ("Content-Length", str(len(body)))])
        return [body]

    server_end, client_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    server = SimpleNamespace(app=app, passthrough_errors=False, ssl_context=None, multithread=True,
                             multiprocess=False, server_address=("127.0.0.1", 5000), log=lambda *a, **k: None)
    client_end.sendall(REQUEST)
    # What werkzeug's threaded server does to the handler class it is given (HTTP/1.1).
    served = type("Served", (handler_class,), {"protocol_version": "HTTP/1.1"})
    worker = threading.Thread(target=served, args=(server_end, ("127.0.0.1", 40000), server))
    worker.start()
    records = []
    while record := client_end.recv(1 << 20):
        records.append(record)
        if b"".join(records).endswith(body):
            break
    worker.join(timeout=10)
    server_end.close()
    client_end.close()
    return records


@pytest.mark.parametrize("size", [10, len(BODY), 150_000])
def test_a_response_leaves_in_one_write_headers_and_body_together(size: int) -> None:
    body = BODY[:size] if size <= len(BODY) else b"y" * size
    records = records_of_one_answer(request_handler(), body)
    assert len(records) == 1, [r[:40] for r in records]
    head, _, received = records[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"Connection: close" in head and received == body


def test_moto_s_own_handler_would_split_it_which_is_what_the_client_tripped_on() -> None:
    # The control: without the buffered writer the same answer takes more than one write.
    moto_handler = request_handler().__mro__[1]
    assert moto_handler.__name__ == "MotoRequestHandler"
    records = records_of_one_answer(moto_handler)
    assert len(records) > 1
    assert b"".join(records).endswith(BODY)
