"""`qkv explore`'s server against hostile clients, over real sockets on 127.0.0.1: a client that sends half a
request and waits blocks nobody else; more connections than the bound are answered 503 at once; a page elsewhere
cannot make it run the model (cross-origin, text/plain, no token); a lone surrogate and a deeply nested body are
clear 400s; and nothing a client sends prints a traceback on the server."""
import json
import socket
import threading
import urllib.error
import urllib.request

import pytest
import torch

import qkv
from qkv.data import CharTokenizer
from qkv.explore import Explorer, ExploreInputError
from qkv.explore_server import make_server
from qkv.explore_server import MAX_BODY, read_request

CORPUS = ["el gato compró tres árboles", "the cat sat on the mat"] * 3


@pytest.fixture(scope="module")
def explorer():
    tok = CharTokenizer.train(iter(CORPUS))
    torch.manual_seed(0)
    model = qkv.build(qkv.preset("transformer-tiny", vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                 bos_token_id=tok.bos_id, eos_token_id=tok.eos_id, decoder_start_token_id=tok.bos_id,
                                 max_positions=64)).eval()
    return Explorer(model, tok, max_new_tokens=6, max_chars=60)


class Served:
    def __init__(self, explorer, **limits):
        self.server = make_server(explorer, port=0, **limits)
        self.port, self.token = self.server.server_address[1], self.server.token
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def request(self, path="/", body=None, *, raw=None, headers=None, timeout=30):
        """(status, text) of a request; a POST is made as the page makes it unless headers say otherwise."""
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json", "X-Qkv-Token": self.token} if data is not None else {}
        sent.update(headers or {})
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data,
                                     method="POST" if data is not None else "GET")
        for k, v in sent.items():
            if v is not None:
                req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stalled(self, *, body: bool) -> socket.socket:
        """A client that sends half a request (the headers cut short, or the headers and half the body) and waits."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=30)
        head = (f"POST /api/explore HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\nContent-Type: application/json\r\n"
                f"X-Qkv-Token: {self.token}\r\n")
        s.sendall((head + "Content-Length: 100\r\n\r\n{\"te" if body else head).encode())
        return s

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def served(explorer):
    s = Served(explorer, timeout=30)
    yield s
    s.close()


def still_open(sock: socket.socket) -> bool:
    """Whether the server has neither answered nor closed sock (nothing to read without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(1) is None  # data or b"" (closed): not held
    except BlockingIOError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.parametrize("body", [False, True], ids=["half-headers", "half-body"])
def test_a_stalled_client_blocks_nobody_else(served, body):
    stalled = served.stalled(body=body)
    try:
        status, page = served.request("/", timeout=20)  # single-threaded, this waited out the stalled one
        assert status == 200 and "qkv-data" in page
        status, answer = served.request("/api/explore", {"text": "el gato"}, timeout=20)
        assert status == 200 and "example" in json.loads(answer)
        assert still_open(stalled)  # the first client still holds its socket, unanswered
    finally:
        stalled.close()


def test_a_stalled_client_is_dropped_after_the_socket_timeout_without_a_traceback(explorer, capfd):
    served = Served(explorer, timeout=0.3)
    try:
        for body in (False, True):
            stalled = served.stalled(body=body)
            stalled.settimeout(20)
            assert stalled.recv(4096) == b""  # closed by the server, unanswered: nobody is waiting for an answer
            stalled.close()
        assert served.request("/")[0] == 200
    finally:
        served.close()
    assert "Traceback" not in capfd.readouterr().err


def test_connections_over_the_bound_are_answered_503_at_once(explorer):
    served = Served(explorer, timeout=30, max_threads=2)
    held = [served.stalled(body=False), served.stalled(body=True)]
    try:
        status, body = served.request("/", timeout=20)
        assert status == 503 and "busy" in json.loads(body)["error"]
        assert all(still_open(s) for s in held)
    finally:
        for s in held:
            s.close()
        served.close()


@pytest.mark.parametrize("headers, status, reason", [
    ({"Content-Type": "text/plain"}, 415, "application/json"),  # a form or fetch elsewhere needs no preflight
    ({"Content-Type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"Content-Type": "application/json; charset=latin-1"}, 415, "UTF-8"),
    ({"X-Qkv-Token": None}, 403, "X-Qkv-Token"),
    ({"X-Qkv-Token": "guess"}, 403, "X-Qkv-Token"),
    ({"Origin": "http://evil.example"}, 403, "origin"),
    ({"Origin": "null"}, 403, "origin"),  # a file:// page or a sandboxed frame
    ({"Host": "evil.example"}, 403, "host"),  # DNS rebinding
    ({"Host": "127.0.0.1:1"}, 403, "host"),
])
def test_requests_a_page_elsewhere_could_send_are_refused_before_the_model_runs(served, headers, status, reason,
                                                                                 monkeypatch):
    ran = []
    monkeypatch.setattr(served.server.RequestHandlerClass.explorer, "example", lambda text: ran.append(text))
    got, body = served.request("/api/explore", {"text": "el gato"}, headers=headers)
    assert got == status and reason.lower() in json.loads(body)["error"].lower()
    assert not ran


def test_the_page_carries_the_token_and_its_own_origin_is_served(served):
    status, page = served.request("/")
    data = json.loads(page.split('id="qkv-data">', 1)[1].split("</script>", 1)[0])
    assert status == 200 and data["token"] == served.token and data["live"] is True
    for origin in (f"http://127.0.0.1:{served.port}", f"http://localhost:{served.port}"):
        assert served.request("/api/explore", {"text": "el gato"}, headers={"Origin": origin})[0] == 200
    # one token per server: another server has another
    other = make_server(served.server.RequestHandlerClass.explorer, port=0)
    try:
        assert other.token != served.token and len(served.token) >= 32
    finally:
        other.server_close()


@pytest.mark.parametrize("raw, reason", [
    (b'{"text": "\\ud800"}', "lone surrogate U+D800"),
    (b'{"text": "el \\udfff gato"}', "lone surrogate U+DFFF at character 3"),
    (b"[" * 50000 + b"]" * 50000, None),  # over the body bound: 413, never parsed
    (b'{"text": ' + b"[" * 30000 + b"]" * 30000 + b"}", "nests 30001 levels"),
    (b'{"text": [["a"]]}', "nests 3 levels"),
    (b'{"text": "el gato"', "not JSON (line 1, column"),
    (b"\xff\xfe{}", "not UTF-8 (byte 0xff at offset 0)"),
    (b'["text"]', 'expected a JSON object {"text": "..."}'),
])
def test_malformed_bodies_are_one_line_400s_and_the_server_keeps_serving(served, raw, reason, capfd, caplog):
    status, body = served.request("/api/explore", raw=raw)
    if reason is None:
        assert status == 413 and str(MAX_BODY) in json.loads(body)["error"]
    else:
        error = json.loads(body)["error"]
        assert status == 400 and reason in error and "\n" not in error
    assert served.request("/api/explore", {"text": "el gato"})[0] == 200
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= 30]


def test_brackets_inside_the_text_are_text_not_nesting(served):
    status, body = served.request("/api/explore", {"text": "el [[[gato]]] {"})
    assert status == 200 and json.loads(body)["example"]["source"] == "el [[[gato]]] {"
    assert read_request(b'{"text": "[[[[\\"]]]"}') == ('[[[["]]]', None)


def test_the_library_refuses_a_lone_surrogate_too(explorer):
    with pytest.raises(ExploreInputError, match="lone surrogate U\\+DCFF at character 2"):
        explorer.example("el\udcff")  # a command line's undecodable byte arrives as one


def test_a_model_failure_is_one_warning_line_not_a_traceback(served, monkeypatch, capfd, caplog):
    def broken(text):
        raise RuntimeError("out of cheese")
    monkeypatch.setattr(served.server.RequestHandlerClass.explorer, "example", broken)
    status, body = served.request("/api/explore", {"text": "el gato"})
    assert status == 500 and "RuntimeError: out of cheese" in json.loads(body)["error"]
    assert "Traceback" not in capfd.readouterr().err
    assert not [r for r in caplog.records if r.exc_info and r.levelno >= 30]
