"""The server against misbehaving clients over raw sockets on 127.0.0.1: a client that promises a body and stalls
is cut off after the read timeout (a 408 in OpenAI's shape) instead of holding a handler forever; a client that
disconnects mid-body or mid-stream costs one log line, never a traceback (and a streamed row leaves its batch);
an idle keep-alive connection is closed after the read timeout; out-of-range request fields are a 400, never a
500."""

import json
import logging
import socket
import time

import pytest
from conftest_ft import Running, make_tiny_run

from gptlab.posttrain.serve import make_server

HEAD = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_tiny_run(tmp_path_factory.mktemp("serve-timeouts") / "tiny")


@pytest.fixture
def served(run, caplog):
    caplog.set_level(logging.INFO, logger="gptlab.posttrain.serve")
    srv = make_server(run, port=0, device="cpu", read_timeout=0.5)
    with Running(srv):
        yield srv


def _connect(srv) -> socket.socket:
    return socket.create_connection(srv.server_address[:2], timeout=10)


def _response(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def _wait_for(caplog, text: str, seconds: float = 10) -> str:
    deadline = time.time() + seconds
    while time.time() < deadline:
        lines = [r.getMessage() for r in caplog.records if text in r.getMessage()]
        if lines:
            return lines[0]
        time.sleep(0.02)
    raise AssertionError(f"no log line with {text!r}: {caplog.text}")


def _no_traceback(caplog, capfd):
    out, err = capfd.readouterr()
    assert "Traceback" not in caplog.text + out + err
    assert all(r.exc_info is None for r in caplog.records)


def test_half_sent_body_is_cut_off_after_the_read_timeout(served, caplog, capfd):
    with _connect(served) as s:
        s.sendall(HEAD + b'{"prompt": "x"')  # 14 of the 100 promised bytes, then nothing
        t0 = time.time()
        reply = _response(s)  # the server answers and closes; without a timeout this waits forever
        waited = time.time() - t0
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    body = json.loads(reply.split(b"\r\n\r\n", 1)[1])
    assert body["error"]["code"] == "request_timeout" and set(body["error"]) == {"message", "type", "param", "code"}
    assert 0.4 < waited < 5
    line = _wait_for(caplog, "timed out")
    assert "\n" not in line
    _no_traceback(caplog, capfd)
    with _connect(served) as s:  # the server still answers
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200")


def test_client_disconnecting_mid_body_is_one_log_line(served, caplog, capfd):
    with _connect(served) as s:
        s.sendall(HEAD + b'{"prompt": "x"')
        s.shutdown(socket.SHUT_WR)  # the client is gone before the promised 100 bytes
        reply = _response(s)
    assert reply == b""  # nothing to answer: the client left
    line = _wait_for(caplog, "disconnected")
    assert "14 of 100" in line and "\n" not in line
    _no_traceback(caplog, capfd)


def test_client_resetting_mid_body_is_one_log_line(served, caplog, capfd):
    s = _connect(served)
    s.sendall(HEAD + b'{"prompt": "x"')
    time.sleep(0.05)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # close with a RST
    s.close()
    _wait_for(caplog, "disconnected")
    _no_traceback(caplog, capfd)


def test_client_leaving_mid_stream_is_one_log_line_and_leaves_the_batch(served, caplog, capfd):
    """A streamed completion whose client reads the first events and goes: one log line, and the worker drops the
    row instead of generating all 500 tokens."""
    raw = json.dumps({"prompt": "Once upon a time", "max_tokens": 500, "temperature": 0, "stream": True}).encode()
    cancelled = served.batcher.cancelled_rows
    with _connect(served) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: " + str(len(raw)).encode() + b"\r\n\r\n" + raw
        )
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(65536)
    assert got.startswith(b"HTTP/1.1 200")
    line = _wait_for(caplog, "mid-stream")
    assert "\n" not in line
    deadline = time.time() + 10
    while served.batcher.cancelled_rows == cancelled and time.time() < deadline:
        time.sleep(0.02)
    assert served.batcher.cancelled_rows == cancelled + 1
    _no_traceback(caplog, capfd)
    with _connect(served) as s:  # the server still answers
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _response(s).startswith(b"HTTP/1.1 200")


def test_idle_keep_alive_connection_is_closed_after_the_read_timeout(served):
    with _connect(served) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive by default in HTTP/1.1
        t0 = time.time()
        reply = _response(s)  # the answer, then the server closes the idle connection
        waited = time.time() - t0
    assert reply.startswith(b"HTTP/1.1 200") and 0.4 < waited < 5


@pytest.mark.parametrize(
    "field,value",
    [
        ("seed", 2**64),
        ("seed", -(2**63) - 1),
        ("max_tokens", 2**70),
        ("temperature", 1e400),
        ("n", 2**64),
        ("top_p", -1e-9),
    ],
)
def test_out_of_range_request_fields_are_400_not_500(served, field, value):
    raw = json.dumps({"prompt": "x", "max_tokens": 1, field: value}).encode()
    with _connect(served) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: "
            + str(len(raw)).encode()
            + b"\r\n\r\n"
            + raw
        )
        reply = _response(s)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:300]
    err = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]
    assert err["param"] == field and err["type"] == "invalid_request_error"


def test_chunked_bodies_are_read_under_the_same_cap(served):
    """A body without Content-Length (chunked) is accepted, and refused with a 413 once it outgrows the cap."""

    def post_chunked(chunks: list[bytes]) -> bytes:
        with _connect(served) as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for c in chunks:
                s.sendall(b"%x\r\n%s\r\n" % (len(c), c))
            s.sendall(b"0\r\n\r\n")
            return _response(s)

    ok = post_chunked([b'{"prompt": "x", ', b'"max_tokens": 2}'])
    assert ok.startswith(b"HTTP/1.1 200"), ok[:300]
    big = post_chunked([b'{"prompt": "', b"a" * (1 << 20), b'"}'])
    assert big.startswith(b"HTTP/1.1 413"), big[:300]
    assert json.loads(big.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_too_large"
