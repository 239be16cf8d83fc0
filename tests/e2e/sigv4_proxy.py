"""A recording reverse proxy in front of ``mlflow server``, standing in for SageMaker managed MLflow.

The sagemaker-mlflow plugin sends every request for an ``arn:aws:sagemaker:...`` tracking URI to
``$SAGEMAKER_MLFLOW_CUSTOM_ENDPOINT`` when it is set. Pointing that at this proxy lets a test see what a
SageMaker tracking server would see: each request's method, path and SigV4 headers, and which process sent
it (the Airflow worker or a trainer container). The proxy checks no signature; it forwards everything.

Bodies are streamed both ways (``Content-Length`` or chunked requests; responses with or without a length,
re-chunked when the upstream sends none), so multi-MB artifact uploads and downloads pass unchanged.
"""

from __future__ import annotations

import http.client
import os
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

CHUNK = 64 * 1024
# Small bodies are kept so a test can tell e.g. which run tag a request wrote.
KEEP_BODY_BYTES = 64 * 1024
HOP_BY_HOP = {
    "connection",
    "expect",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
}
# The SigV4 headers, and the header SageMaker routes a request to a tracking server by.
RECORDED_HEADERS = (
    "Authorization",
    "X-Amz-Date",
    "X-Amz-Security-Token",
    "X-Amz-Content-SHA256",
    "x-mlflow-sm-tracking-server-arn",
)
SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,"
    r"\s*SignedHeaders=(?P<signed>[^,\s]+),\s*Signature=(?P<signature>[0-9a-f]{64})$"
)


@dataclass(frozen=True)
class Peer:
    """The local process on the other end of a connection, when it can be found through ``/proc``."""

    pid: int | None
    container_id: str | None  # the Docker container the process runs in, None for a host process

    @property
    def in_container(self) -> bool:
        return self.container_id is not None


@dataclass
class Recorded:
    method: str
    path: str
    query: str
    headers: dict[str, str]  # RECORDED_HEADERS present on the request, as sent
    peer: Peer
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    body: bytes = b""  # the first KEEP_BODY_BYTES of the request body
    at: float = field(default_factory=time.time)

    def sigv4(self) -> dict[str, str] | None:
        """The parsed ``Authorization: AWS4-HMAC-SHA256 ...`` header, or None if absent or not SigV4."""
        match = SIGV4.match(self.headers.get("Authorization", ""))
        return match.groupdict() if match else None


def _socket_inode(local_port: int, remote_port: int) -> str | None:
    """The inode of the client's end of a loopback TCP connection (client port -> proxy port)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)
                for line in lines:
                    parts = line.split()
                    if (
                        int(parts[1].rsplit(":", 1)[1], 16) == local_port
                        and int(parts[2].rsplit(":", 1)[1], 16) == remote_port
                    ):
                        return parts[9]
        except OSError:
            continue
    return None


def _owner(inode: str) -> int | None:
    target = f"socket:[{inode}]"
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                    return int(pid)
        except OSError:
            continue
    return None


def _container_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as cgroup:
            match = re.search(r"/docker[/-]([0-9a-f]{64})", cgroup.read())
    except OSError:
        return None
    return match.group(1) if match else None


def find_peer(client_port: int, server_port: int) -> Peer:
    """Which process opened this connection. Works for host processes and ``network_mode: host`` containers
    when the proxy can read the other processes' ``/proc`` entries (as root); otherwise an unknown peer."""
    inode = _socket_inode(client_port, server_port)
    pid = _owner(inode) if inode and inode != "0" else None
    return Peer(pid=pid, container_id=_container_of(pid) if pid else None)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.peer = find_peer(self.client_address[1], self.server.server_address[1])

    def log_message(self, format: str, *args) -> None:  # the recording is the log
        pass

    def _request_body(self):
        """The request body as an iterator of byte chunks, decoding a chunked upload."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                        pass
                    return
                remaining = size
                while remaining:
                    data = self.rfile.read(min(CHUNK, remaining))
                    if not data:
                        raise ConnectionError("client closed the connection mid-chunk")
                    remaining -= len(data)
                    yield data
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                data = self.rfile.read(min(CHUNK, remaining))
                if not data:
                    raise ConnectionError("client closed the connection mid-body")
                remaining -= len(data)
                yield data

    def _forward(self) -> None:
        parts = urlsplit(self.path)
        record = Recorded(
            method=self.command,
            path=parts.path,
            query=parts.query,
            headers={name: self.headers[name] for name in RECORDED_HEADERS if name in self.headers},
            peer=self.peer,
        )
        self.server.record(record)
        upstream = self.server.upstream
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"]
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        has_body = chunked or "Content-Length" in self.headers
        conn = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=self.server.timeout_s)
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", upstream.netloc)
            for name, value in headers:
                conn.putheader(name, value)
            if chunked:
                conn.putheader("Transfer-Encoding", "chunked")
            conn.endheaders()
            if has_body:
                for data in self._request_body():
                    record.request_bytes += len(data)
                    if len(record.body) < KEEP_BODY_BYTES:
                        record.body += data[: KEEP_BODY_BYTES - len(record.body)]
                    conn.send(b"%x\r\n%s\r\n" % (len(data), data) if chunked else data)
                if chunked:
                    conn.send(b"0\r\n\r\n")
            response = conn.getresponse()
            record.status = response.status
            self._relay(response, record)
        except (ConnectionError, TimeoutError, http.client.HTTPException, OSError) as exc:
            if record.status is None:
                record.status = 502
                message = f"proxy: upstream request failed: {exc}".encode()
                self.send_response(502)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(message)))
                self.end_headers()
                self.wfile.write(message)
            self.close_connection = True
        finally:
            conn.close()

    def _relay(self, response: http.client.HTTPResponse, record: Recorded) -> None:
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        no_body = self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200
        length = response.getheader("Content-Length")
        rechunk = not no_body and length is None
        if rechunk:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        if no_body:
            return
        # http.client decodes an upstream chunked body; a body without a length is re-chunked to the client.
        while data := response.read1(CHUNK):
            record.response_bytes += len(data)
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data) if rechunk else data)
        if rechunk:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = _forward


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, upstream: str, timeout_s: float) -> None:
        super().__init__(address, _Handler)
        self.upstream = urlsplit(upstream)
        self.timeout_s = timeout_s
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()

    def record(self, record: Recorded) -> None:
        with self._lock:
            self.requests.append(record)


class SigV4RecordingProxy:
    """``with SigV4RecordingProxy("http://127.0.0.1:5000") as proxy: ... proxy.url ... proxy.requests``."""

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 300) -> None:
        self._server = _Server((host, port), upstream.rstrip("/"), timeout_s)
        self._thread = threading.Thread(target=self._server.serve_forever, name="sigv4-proxy", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def requests(self) -> list[Recorded]:
        with self._server._lock:
            return list(self._server.requests)

    def requests_since(self, mark: int) -> list[Recorded]:
        """The requests recorded after ``mark = len(proxy.requests)`` was taken."""
        return self.requests[mark:]

    def start(self) -> SigV4RecordingProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> SigV4RecordingProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
