"""A loopback TCP proxy in front of a real server that fails on cue, as a restarting server or a proxy would.

It forwards bytes both ways and reads just enough of each HTTP/1.1 request (request line, headers,
``Content-Length`` body) to count the requests that match. After ``cut_after`` matching requests have
passed, the next matching one fails, by ``failure``:

- ``"drop"``: it is still forwarded (the server acts on it) but its answer is dropped and the connection
  closed, so the client cannot know whether it worked;
- ``"503"``: it is answered ``503 Service Unavailable`` without reaching the server, as a proxy in front of
  a restarting server answers;
- ``"hang"``: it is not forwarded and never answered (a black hole).

Then, when ``outage`` is True, every later request fails too ("drop": the connection is closed at once)
until :meth:`FlakyProxy.heal`; when False, traffic flows again at once (a single blip).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

_BUF = 65536
_FAILURES = ("drop", "503", "hang")
_UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class FlakyProxy:
    """Proxy ``127.0.0.1:<port>`` -> ``upstream`` that fails after ``cut_after`` requests for which ``match`` holds.

    ``match(method, path) -> bool``. ``url`` is what clients use; ``dropped`` counts the requests cut (answer
    lost, 503 or hung) and ``matched`` the matching requests seen.
    """

    def __init__(self, upstream: tuple[str, int], cut_after: int, match: Callable[[str, str], bool],
                 outage: bool = True, failure: str = "drop") -> None:
        assert failure in _FAILURES, failure
        self._upstream = upstream
        self._cut_after = cut_after
        self._match = match
        self._outage = outage
        self._failure = failure
        self._released = threading.Event()  # set when hung connections may be closed
        self._lock = threading.Lock()
        self._down = False
        self.matched = 0
        self.dropped = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def heal(self, cut_after: int | None = None) -> None:
        """Forward everything again (``cut_after=None``: for good)."""
        with self._lock:
            self._down = False
            self._cut_after = cut_after if cut_after is not None else 10**9
            self.matched = 0
        self._released.set()

    def close(self) -> None:
        self._released.set()
        self._listener.close()

    def __enter__(self) -> FlakyProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                down = self._down
            if down:
                threading.Thread(target=self._refuse, args=(client,), daemon=True).start()
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _refuse(self, client: socket.socket) -> None:
        """A connection made while the proxy is down: closed, answered 503, or held unanswered."""
        try:
            if self._failure == "hang":
                self._released.wait()
            elif self._failure == "503":
                client.recv(_BUF)
                client.sendall(_UNAVAILABLE)
        except OSError:
            pass
        finally:
            _close(client)

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = socket.create_connection(self._upstream)
        except OSError:
            _close(client)
            return
        drop = threading.Event()
        threading.Thread(target=self._answers, args=(upstream, client, drop), daemon=True).start()
        try:
            self._requests(client, upstream, drop)
        except OSError:
            pass
        finally:
            _close(client, upstream)

    def _requests(self, client: socket.socket, upstream: socket.socket, drop: threading.Event) -> None:
        """Forward whole requests from ``client`` to ``upstream``, deciding for each whether its answer is lost."""
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                chunk = client.recv(_BUF)
                if not chunk:
                    return
                buf += chunk
            head, _, rest = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path = lines[0].split(" ")[:2]
            headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
            assert "chunked" not in headers.get("transfer-encoding", ""), "chunked request bodies are not supported"
            length = int(headers.get("content-length", "0"))
            while len(rest) < length:
                chunk = client.recv(_BUF)
                if not chunk:
                    return
                rest += chunk
            body, buf = rest[:length], rest[length:]
            verdict = self._admit(method, path)
            if verdict == "forward":
                upstream.sendall(head + b"\r\n\r\n" + body)
                continue
            if verdict == "drop":
                drop.set()  # the answer pump hangs up when the server's answer arrives
                upstream.sendall(head + b"\r\n\r\n" + body)
            elif verdict == "503":
                client.sendall(_UNAVAILABLE)
            elif verdict == "hang":
                self._released.wait()
            return

    def _admit(self, method: str, path: str) -> str:
        """What to do with a request: "forward", "close" (the proxy is down), or the failure for a cut one."""
        with self._lock:
            if self._down:
                return {"drop": "close"}.get(self._failure, self._failure)
            if not self._match(method, path):
                return "forward"
            self.matched += 1
            if self.matched <= self._cut_after:
                return "forward"
            self.dropped += 1
            self._down = self._outage
            if not self._outage:
                self._cut_after = 10**9
            return self._failure

    def _answers(self, upstream: socket.socket, client: socket.socket, drop: threading.Event) -> None:
        """Pass answers back, except the one to a cut request: wait for it (the server has acted), then hang up."""
        try:
            while True:
                chunk = upstream.recv(_BUF)
                if not chunk:
                    break
                if drop.is_set():
                    break
                client.sendall(chunk)
        except OSError:
            pass
        finally:
            _close(client, upstream)


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
