"""A small Hugging Face Hub for tests: the HTTP protocol huggingface_hub's download code speaks.

No maintained PyPI package serves local repos this way for tests (olah, the one self-hosted mirror,
proxies the real Hub and needs git repos; none can cut a connection on purpose), so this is a
threaded `http.server` speaking the subset huggingface_hub 2.x uses (read from its source:
file_download.py, _snapshot_download.py, hf_api.py, utils/_http.py):

- `GET /api/models/{repo}[/revision/{rev}]` (model_info; `?blobs=true` adds sizes, blob ids, LFS)
- `GET /api/models/{repo}/tree/{rev}[/{path}]` (list_repo_tree, one page)
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}` with ETag, X-Repo-Commit, Content-Length,
  Accept-Ranges and `Range: bytes=N-` (206 + Content-Range)
- errors as the Hub sends them: 404 + `X-Error-Code: EntryNotFound` / `RevisionNotFound`,
  401 + `RepoNotFound` for an unknown repo, 401 + `GatedRepo` for a gated one.

Every request is logged (method, path, Range), so a test can assert what a command fetched.
`cut_once(path, after)` makes the next GET of a file (ranged or not) send `after` bytes of its
body and drop the connection; `stall_once(path, after)` sends `after` bytes and then waits until `release()`.

Switchable misbehaviours, for what a hostile or broken mirror does (each keyed by `repo_id/path`):
`etags` (an ETag header of the server's choosing), `tampered` (other bytes than the ETag says),
`cut_always` / `stall_always` (every GET of the file), `silent_get` (every GET of the file is
accepted and never answered, not even a status line, while HEAD answers: a proxy that hangs on
the transfer only), `extra_names` (names a listing adds, per repo),
and `redirect_lfs_to` (LFS files answered with a 302 to another server, as the Hub's CDN redirects:
every request records its Authorization header, so a test sees where the token went).
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

# Files the real Hub keeps in LFS (their ETag is the content's sha256).
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".ckpt", ".h5", ".msgpack", ".onnx")


@dataclass
class HubRepo:
    files: dict[str, bytes]
    gated: bool = False
    sha: str = ""

    def __post_init__(self):
        if not self.sha:
            digest = hashlib.sha1()
            for name in sorted(self.files):
                digest.update(name.encode() + b"\0" + hashlib.sha256(self.files[name]).digest())
            self.sha = digest.hexdigest()

    def etag(self, path: str) -> str:
        data = self.files[path]
        if path.endswith(LFS_SUFFIXES):
            return hashlib.sha256(data).hexdigest()
        return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

    def sibling(self, path: str, blobs: bool) -> dict:
        entry: dict = {"rfilename": path}
        if blobs:
            data = self.files[path]
            entry["size"] = len(data)
            entry["blobId"] = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
            if path.endswith(LFS_SUFFIXES):
                entry["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry


def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    """Every file under `folder`, keyed by its path in the repo (with `prefix`)."""
    return {prefix + path.relative_to(folder).as_posix(): path.read_bytes()
            for path in sorted(folder.rglob("*")) if path.is_file()}


@dataclass
class Logged:
    method: str
    path: str
    range: str | None
    status: int = 0
    authorization: str | None = None


@dataclass
class HubServer:
    repos: dict[str, HubRepo]
    log: list[Logged] = field(default_factory=list)
    _cuts: dict[str, int] = field(default_factory=dict)
    _stalls: dict[str, int] = field(default_factory=dict)
    _release: threading.Event = field(default_factory=threading.Event)
    stalled: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    etags: dict[str, str] = field(default_factory=dict)
    tampered: dict[str, bytes] = field(default_factory=dict)
    cut_always: dict[str, int] = field(default_factory=dict)
    stall_always: dict[str, int] = field(default_factory=dict)
    silent_get: set[str] = field(default_factory=set)
    extra_names: dict[str, list[str]] = field(default_factory=dict)
    redirect_lfs_to: str = ""

    def start(self) -> "HubServer":
        hub = self

        class Handler(HubHandler):
            server_hub = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()

    def stop_stalling(self) -> None:
        self.stall_always.clear()
        self._release.set()

    def cut_once(self, repo_path: str, after: int) -> None:
        """The next GET of `repo_id/path` sends `after` bytes, then the connection drops."""
        self._cuts[repo_path] = after

    def stall_once(self, repo_path: str, after: int) -> None:
        """The next GET of `repo_id/path` sends `after` bytes, then waits for `release()`."""
        self._release.clear()
        self.stalled.clear()
        self._stalls[repo_path] = after

    def release(self) -> None:
        self._release.set()

    def downloads(self) -> list[str]:
        """`repo_id/path` of every file body sent (GET on resolve), in order."""
        return [entry.path for entry in self.log if entry.method == "GET" and entry.status in (200, 206)
                and "/resolve/" in entry.path]

    def record(self, entry: Logged) -> None:
        with self._lock:
            self.log.append(entry)


class HubHandler(BaseHTTPRequestHandler):
    server_hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):  # quiet: the log list is the record
        pass

    def do_HEAD(self):
        self.handle_request(send_body=False)

    def do_GET(self):
        self.handle_request(send_body=True)

    # -- routing ---------------------------------------------------------------------------

    def handle_request(self, send_body: bool) -> None:
        url = urlparse(self.path)
        path = unquote(url.path)
        entry = Logged(self.command, path, self.headers.get("Range"), authorization=self.headers.get("Authorization"))
        self.server_hub.record(entry)
        if path.startswith("/api/models/"):
            entry.status = self.api(path[len("/api/models/"):], parse_qs(url.query), send_body)
        elif "/resolve/" in path:
            entry.status = self.resolve(path.lstrip("/"), send_body, entry)
        else:
            entry.status = self.error(404, "RepoNotFound", "Not found", send_body)

    def find_repo(self, text: str) -> tuple[str, HubRepo, str] | None:
        """(repo id, repo, rest of the path) for 'owner/name/rest'."""
        parts = text.split("/", 2)
        if len(parts) < 2:
            return None
        repo_id = "/".join(parts[:2])
        repo = self.server_hub.repos.get(repo_id)
        return (repo_id, repo, parts[2] if len(parts) > 2 else "") if repo else None

    def refuse(self, repo_id: str, repo: HubRepo | None, send_body: bool) -> int | None:
        if repo is None:
            return self.error(401, "RepoNotFound", "Repository not found", send_body)
        if repo.gated and not self.headers.get("Authorization"):
            return self.error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to "
                              "it and be authenticated to access it. Please log in.", send_body)
        return None

    def api(self, rest: str, query: dict, send_body: bool) -> int:
        found = self.find_repo(rest)
        if found is None:
            return self.error(401, "RepoNotFound", "Repository not found", send_body)
        repo_id, repo, tail = found
        refused = self.refuse(repo_id, repo, send_body)
        if refused:
            return refused
        if tail.startswith("tree/"):
            revision, _, folder = tail[len("tree/"):].partition("/")
            if revision not in ("main", repo.sha):
                return self.error(404, "RevisionNotFound", "Invalid rev id", send_body)
            entries = [{"type": "file", "oid": repo.sibling(name, True)["blobId"], "size": len(data), "path": name,
                        **({"lfs": {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}}
                           if name.endswith(LFS_SUFFIXES) else {})}
                       for name, data in sorted(repo.files.items()) if name.startswith(folder)]
            return self.json(entries, send_body)
        revision = "main"
        if tail.startswith("revision/"):
            revision = tail[len("revision/"):]
        elif tail:
            return self.error(404, None, "Not found", send_body)
        if revision not in ("main", repo.sha):
            return self.error(404, "RevisionNotFound", "Invalid rev id", send_body)
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        info = {
            "_id": repo.sha[:24], "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": repo.sha, "private": False, "gated": "auto" if repo.gated else False, "disabled": False,
            "downloads": 0, "likes": 0, "tags": [], "lastModified": "2024-01-01T00:00:00.000Z",
            "createdAt": "2024-01-01T00:00:00.000Z",
            "siblings": [repo.sibling(name, blobs) for name in sorted(repo.files)]
            + [{"rfilename": name, "size": 0} for name in self.server_hub.extra_names.get(repo_id, [])],
        }
        return self.json(info, send_body)

    def resolve(self, text: str, send_body: bool, entry: Logged) -> int:
        repo_part, _, rest = text.partition("/resolve/")
        repo = self.server_hub.repos.get(repo_part)
        refused = self.refuse(repo_part, repo, send_body)
        if refused:
            return refused
        revision, _, file_path = rest.partition("/")
        if revision not in ("main", repo.sha):
            return self.error(404, "RevisionNotFound", "Invalid rev id", send_body)
        if file_path not in repo.files:
            return self.error(404, "EntryNotFound", f"{file_path} does not exist on \"{revision}\"", send_body)
        hub = self.server_hub
        key = f"{repo_part}/{file_path}"
        if hub.redirect_lfs_to and file_path.endswith(LFS_SUFFIXES):
            # As the Hub answers for LFS files: the metadata on the redirect itself, the bytes elsewhere.
            self.send_response(302)
            self.send_header("Location", f"{hub.redirect_lfs_to}/{repo_part}/resolve/{repo.sha}/{file_path}")
            self.send_header("X-Linked-Etag", f'"{repo.etag(file_path)}"')
            self.send_header("X-Linked-Size", str(len(repo.files[file_path])))
            self.send_header("X-Repo-Commit", repo.sha)
            self.send_header("ETag", f'"{repo.etag(file_path)}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return 302
        if send_body and key in hub.silent_get:
            entry.status = 0  # nothing sent: the client waits for a status line until its timeout
            hub._release.wait(timeout=60)
            self.close_connection = True
            return 0
        data = hub.tampered.get(key, repo.files[file_path])
        start = 0
        requested = self.headers.get("Range")
        if requested and requested.startswith("bytes=") and requested.endswith("-"):
            start = int(requested[len("bytes="):-1])
        status = 206 if start else 200
        self.send_response(status)
        self.send_header("ETag", f'"{hub.etags.get(key, repo.etag(file_path))}"')
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        self.send_header("Content-Type", "application/octet-stream")
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if not send_body:
            return status
        cut = hub._cuts.pop(key, None)
        stall = hub._stalls.pop(key, None)
        # The *_always ones stop at that byte of the file, whatever Range asked: a resume gets nothing more.
        if key in hub.cut_always:
            cut = max(0, hub.cut_always[key] - start)
        if key in hub.stall_always:
            stall = max(0, hub.stall_always[key] - start)
        body = data[start:]
        if cut is not None or stall is not None:
            entry.status = status
            self.wfile.write(body[: cut if cut is not None else stall])
            self.wfile.flush()
            if stall is not None:
                hub.stalled.set()
                hub._release.wait(timeout=60)
            # An abrupt end: the client sees fewer bytes than Content-Length announced.
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return status
        self.wfile.write(body)
        return status

    # -- responses -------------------------------------------------------------------------

    def json(self, data, send_body: bool) -> int:
        body = json.dumps(data).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        return 200

    def error(self, status: int, code: str | None, message: str, send_body: bool) -> int:
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
        return status


class BlackHole:
    """An endpoint that accepts connections and never answers (a hung proxy, a captive portal,
    a half-dead mirror): what a stalled network looks like to a client."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._held: list[socket.socket] = []
        self._stop = threading.Event()
        self.connections = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        host, port = self._listener.getsockname()[:2]
        self.url = f"http://{host}:{port}"

    def start(self) -> "BlackHole":
        self._thread.start()
        return self

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except (socket.timeout, OSError):
                continue
            self.connections += 1
            self._held.append(connection)  # kept open, never read, never answered

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for connection in self._held:
            connection.close()
        self._listener.close()
