"""The explorer served on loopback (``qkv explore``): the page at /, and POST /api/explore {"text": ...} answered
with {"example": ...} or {"error": ...}.

    server = make_server(explorer, port=0)   # 127.0.0.1, any free port: server.server_address[1]
    server.serve_forever()                   # server.shutdown() from another thread stops it

What it accepts (docs/security.md, "What the explorer accepts"):
  * each connection in its own thread, at most ``max_threads`` at once (one more is answered 503 at once), each
    socket with a ``timeout``: a client that sends half a request and waits holds one thread until its timeout,
    never the server. The model answers one request at a time (a lock), after the request is read whole.
  * Host must name 127.0.0.1, localhost or [::1] with the server's port (a page elsewhere cannot point its own
    name at loopback, DNS rebinding), and Origin, when a browser sends one, the same.
  * a POST must say ``Content-Type: application/json`` (a cross-origin page can send text/plain without asking),
    carry the token embedded in the page in an ``X-Qkv-Token`` header (a page elsewhere cannot read ours, so cannot
    know it; the custom header also makes a browser ask first, and nobody answers that question), and a body of
    at most MAX_BODY bytes: a UTF-8 JSON object, nested at most two levels, whose "text" is valid Unicode.
Every refusal is a JSON {"error": one line} with a 4xx status; nothing a client sends prints a traceback here.
"""
from __future__ import annotations

import errno
import hmac
import http.server
import json
import logging
import secrets
import socketserver
import threading

from .explore import ExploreInputError
from .viz import explorer_page

log = logging.getLogger("qkv.explore")

MAX_BODY = 64 * 1024  # bytes of a request body read at most
TIMEOUT = 10.0  # seconds a client may keep its socket silent before it is closed
MAX_THREADS = 16  # connections served at once; one more is answered 503
_MAX_DEPTH = 2  # {"text": "..."} is one level; anything nested deeper is not what the page sends
TOKEN_HEADER = "X-Qkv-Token"


def make_server(explorer, *, port: int = 8000, title: str | None = None, examples: list[dict] | tuple = (),
                timeout: float = TIMEOUT, max_threads: int = MAX_THREADS) -> "ExplorerServer":
    """An HTTP server on 127.0.0.1:port (0: any free port; ``server.server_address`` says which) serving the
    explorer page of ``explorer`` (a ``qkv.explore.Explorer``) with ``examples`` (``Explorer.example`` dicts) as
    its first view. ``server.token`` is the token the page echoes on every POST. Raises ValueError naming the
    port when it is taken, and for a timeout or thread bound that is not positive. Call ``serve_forever()``;
    ``shutdown()`` stops it."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port={port!r}: expected an int in 0..65535 (0: any free port)")
    if not isinstance(timeout, (int, float)) or not 0 < timeout < float("inf"):
        raise ValueError(f"timeout={timeout!r}: expected seconds > 0")
    if not isinstance(max_threads, int) or max_threads < 1:
        raise ValueError(f"max_threads={max_threads!r}: expected an int >= 1")

    class Handler(_Handler):
        pass
    Handler.explorer, Handler.title, Handler.examples = explorer, title or explorer.view.title, list(examples)
    Handler.timeout, Handler.lock, Handler.token = timeout, threading.Lock(), secrets.token_urlsafe(24)
    try:
        server = ExplorerServer(("127.0.0.1", port), Handler, max_threads=max_threads)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            raise ValueError(f"port {port} on 127.0.0.1 is already in use (another server?); pass --port N for "
                             f"another one, or --port 0 for any free port") from None
        raise ValueError(f"cannot listen on 127.0.0.1:{port}: {e.strerror or e}") from None
    Handler.port = server.server_address[1]
    server.token = Handler.token
    return server


class ExplorerServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """``http.server`` with one thread per connection, at most ``max_threads`` at once; a connection over the
    bound is answered 503 and closed without a thread. Errors in a connection are logged in one line (debug)."""
    daemon_threads = True  # Ctrl-C ends the server without waiting for a silent client
    block_on_close = False
    token: str

    def __init__(self, address, handler, *, max_threads: int):
        self._slots = threading.BoundedSemaphore(max_threads)
        self.max_threads = max_threads
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            body = json.dumps({"error": f"the explorer is busy ({self.max_threads} connections open); try again"})
            try:
                request.settimeout(1.0)
                request.sendall(f"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-"
                                f"Length: {len(body)}\r\nConnection: close\r\n\r\n{body}".encode())
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request, client_address):
        # A client that went away or stalled past its timeout: nothing to report but one debug line.
        import sys
        e = sys.exc_info()[1]
        log.debug("connection from %s ended: %s: %s", client_address[0], type(e).__name__, e)


class _Handler(http.server.BaseHTTPRequestHandler):
    explorer: object
    title: str
    examples: list
    port: int
    token: str
    lock: threading.Lock
    timeout: float  # StreamRequestHandler sets it on the socket: every read and write waits at most this long
    server_version = "qkv-explore"

    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        # The page needs nothing from elsewhere: only its own inline script, style and images, and requests back here.
        self.send_header("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; "
                                                    "style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj) -> None:
        # ensure_ascii: a text that slipped past the checks still cannot fail to encode
        self._send(status, json.dumps(obj, ensure_ascii=True, allow_nan=False).encode("ascii"),
                   "application/json; charset=utf-8")

    def _names(self) -> tuple[str, ...]:
        return f"127.0.0.1:{self.port}", f"localhost:{self.port}", f"[::1]:{self.port}"

    def _host_ok(self) -> bool:
        # A page elsewhere could point a name at 127.0.0.1 (DNS rebinding); only our own names are served.
        return self.headers.get("Host", "") in self._names()

    def do_GET(self):  # noqa: N802 (the base class's name)
        if not self._host_ok():
            return self._send(403, b"forbidden host", "text/plain; charset=utf-8")
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            page = explorer_page(self.examples or [_empty_example(self.explorer)], title=self.title, live=True,
                                 max_chars=self.explorer.max_chars, token=self.token)
            return self._send(200, page.encode("utf-8"), "text/html; charset=utf-8")
        if path == "/favicon.ico":
            return self._send(204, b"", "text/plain")
        self._send(404, b"not found", "text/plain; charset=utf-8")

    def do_POST(self):  # noqa: N802
        refusal = self._refusal()
        if refusal is not None:
            return self._json(*refusal)
        try:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
        except OSError:  # the client stalled past the timeout, or went away: nobody to answer
            self.close_connection = True
            return None
        text, error = read_request(raw)
        if error is not None:
            return self._json(400, {"error": error})
        try:
            with self.lock:  # one model, one example at a time; the request was read whole before waiting here
                example = self.explorer.example(text)
        except ExploreInputError as e:  # what is wrong with the text, said in the page
            return self._json(400, {"error": str(e)})
        except Exception as e:  # the page says so; the server keeps serving
            log.warning("the model failed on a %d-character text: %s: %s", len(text), type(e).__name__, e)
            log.debug("the model's failure", exc_info=True)
            return self._json(500, {"error": f"The model failed on this input ({type(e).__name__}: {e})."})
        return self._json(200, {"example": example})

    def _refusal(self) -> tuple[int, dict] | None:
        """(status, {"error"}) for a POST that is not the page's own request, checked before its body is read."""
        if not self._host_ok():
            return 403, {"error": "forbidden host: the explorer answers requests to 127.0.0.1, localhost or [::1] "
                                  "with its port"}
        origin = self.headers.get("Origin")
        if origin is not None and origin not in tuple(f"http://{name}" for name in self._names()):
            return 403, {"error": f"forbidden origin {origin[:100]!r}: the explorer answers its own page only"}
        if self.path.split("?", 1)[0] != "/api/explore":
            return 404, {"error": f"no such endpoint {self.path[:100]!r}; POST /api/explore"}
        kind, _, params = (self.headers.get("Content-Type") or "").partition(";")
        charset = params.strip().lower()
        if kind.strip().lower() != "application/json" or charset not in ("", "charset=utf-8"):
            return 415, {"error": "expected Content-Type: application/json (UTF-8)"}
        if not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), self.token.encode()):
            return 403, {"error": f"missing or wrong {TOKEN_HEADER} header: reload the explorer's page"}
        try:
            size = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return 411, {"error": "the request needs a Content-Length"}
        if not 0 <= size <= MAX_BODY:
            return 413, {"error": f"the request is {size} bytes; at most {MAX_BODY} are read"}
        return None


def read_request(raw: bytes) -> tuple[str | None, str | None]:
    """(text, None) from a request body ``{"text": "..."}``, or (None, one line saying what is wrong): not UTF-8,
    not JSON, nested deeper than the page's own request, no "text", or a text that is not valid Unicode (a lone
    surrogate such as "\\ud800", which JSON can spell but no text holds)."""
    try:
        body = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return None, f"the request is not UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})"
    depth = _nesting(body)
    if depth > _MAX_DEPTH:
        return None, f'the request nests {depth} levels deep; expected a JSON object {{"text": "..."}}'
    try:
        value = json.loads(body)
    except (json.JSONDecodeError, RecursionError) as e:
        where = f" (line {e.lineno}, column {e.colno})" if isinstance(e, json.JSONDecodeError) else ""
        return None, f'the request is not JSON{where}; expected a JSON object {{"text": "..."}}'
    if not isinstance(value, dict) or "text" not in value:
        return None, 'expected a JSON object {"text": "..."}'
    text = value["text"]
    if isinstance(text, str):
        bad = next((i for i, c in enumerate(text) if "\ud800" <= c <= "\udfff"), None)
        if bad is not None:
            return None, (f"the text holds a lone surrogate U+{ord(text[bad]):04X} at character {bad}: not a "
                          f"character; expected valid Unicode text")
    return text, None


def _nesting(body: str) -> int:
    """The deepest nesting of JSON arrays and objects in body, brackets inside strings not counted; a scan, so
    a body of 64 KiB of "[" is measured without recursing."""
    depth = deepest = 0
    in_string = escaped = False
    for c in body:
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


IMAGE_HINT = "type a scene number (0, 1, 2, ...)"


def _empty_example(explorer) -> dict:
    """The page's first view before anything was typed."""
    verb = explorer.view.verb
    if explorer.view.image:
        return {"label": "(type a scene number)", "placeholder": True, "source": "", "output": None, "greedy": None,
                "beam": None, "kinds": [], "input_hint": IMAGE_HINT,
                "note": "Type a scene's number (0, 1, 2, ...) and press run: the model captions that generated "
                        "scene, and the page shows each word over where it looked and the beam search step by step."}
    return {"label": "(type a sentence)", "placeholder": True, "source": "", "output": None, "greedy": None,
            "beam": None, "kinds": [],
            "note": f"Type a sentence above and press run: the model will {verb} it, and the page shows every "
                    f"layer's and head's attention" + (" and the beam search step by step." if
                                                        explorer.view.generates else ".")}
