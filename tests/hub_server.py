"""A tiny Hugging Face Hub on 127.0.0.1 for tests: the URLs and headers huggingface_hub's downloads rely on.

Served, as the real Hub does:
  GET  /api/models/{repo}[/revision/{rev}]   model info: sha, gated, siblings (with sizes for ?blobs=true)
  HEAD /{repo}/resolve/{rev}/{file}          small files: 200 + X-Repo-Commit, ETag (git blob sha1), Content-Length
                                             LFS files: 302 to a "CDN" (another host name) + X-Linked-Etag (sha256),
                                             X-Linked-Size, X-Repo-Commit
  GET  the same URLs, and GET /cdn/{sha256}  the bytes
Errors carry X-Error-Code (RepoNotFound, GatedRepo, RevisionNotFound, EntryNotFound), which huggingface_hub maps to
its exception classes. Every request is recorded as (method, path) so tests can see what was fetched.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".h5", ".msgpack")


@dataclass
class FakeRepo:
    files: dict[str, bytes]
    gated_token: str | None = None  # gated: only requests with this bearer token may download
    commit: str = ""

    def __post_init__(self):
        if not self.commit:
            listing = json.dumps(sorted((n, hashlib.sha256(b).hexdigest()) for n, b in self.files.items()))
            self.commit = hashlib.sha1(listing.encode()).hexdigest()

    @classmethod
    def from_dir(cls, path: Path, extra: dict[str, bytes] | None = None, **kwargs) -> "FakeRepo":
        files = {p.name: p.read_bytes() for p in sorted(Path(path).iterdir()) if p.is_file()}
        return cls({**files, **(extra or {})}, **kwargs)


def is_lfs(name: str) -> bool:
    return name.endswith(LFS_SUFFIXES)


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class FakeHub:
    """Serves `repos` over HTTP in a daemon thread; use as a context manager. It also stops itself after max_seconds."""

    repos: dict[str, FakeRepo]
    max_seconds: float = 120.0
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __enter__(self) -> "FakeHub":
        hub = self

        class Handler(_HubHandler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.cdn_url = f"http://localhost:{self.port}/cdn"  # another host name, as the real CDN is
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        self._timer = threading.Timer(self.max_seconds, self._server.shutdown)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._timer.cancel()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fetched(self) -> set[str]:
        """File names whose bytes were requested (GET), directly or through the CDN."""
        by_sha = {hashlib.sha256(b).hexdigest(): n for r in self.repos.values() for n, b in r.files.items()}
        names = set()
        for method, path in self.requests:
            if method != "GET":
                continue
            if path.startswith("/cdn/"):
                names.add(by_sha.get(path.rsplit("/", 1)[-1], path))
            elif "/resolve/" in path:
                names.add(path.split("/resolve/", 1)[1].split("/", 1)[1])
        return names


class _HubHandler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_HEAD(self) -> None:
        self._route(send_body=False)

    def do_GET(self) -> None:
        self._route(send_body=True)

    def _route(self, send_body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.fake.requests.append((self.command, path))
        if path.startswith("/api/models/"):
            self._model_info(path[len("/api/models/"):], blobs="blobs=true" in self.path, send_body=send_body)
        elif path.startswith("/cdn/"):
            self._cdn(path.rsplit("/", 1)[-1], send_body)
        elif "/resolve/" in path:
            repo_id, rest = path.lstrip("/").split("/resolve/", 1)
            revision, _, filename = rest.partition("/")
            self._resolve(repo_id, revision, filename, send_body)
        else:
            self._error(404, None, "Not Found", send_body)

    def _repo(self, repo_id: str, revision: str, send_body: bool) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        if repo is None:
            # Like the real Hub without a token: 401, so private repos cannot be told from missing ones.
            self._error(401, "RepoNotFound", "Repository not found", send_body)
            return None
        if revision not in ("main", repo.commit):
            self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", send_body)
            return None
        return repo

    def _model_info(self, rest: str, blobs: bool, send_body: bool) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(repo_id, revision or "main", send_body)
        if repo is None:
            return
        siblings = []
        for name, data in sorted(repo.files.items()):
            sibling: dict = {"rfilename": name}
            if blobs:
                sibling.update(size=len(data), blobId=git_blob_sha1(data))
                if is_lfs(name):
                    sha = hashlib.sha256(data).hexdigest()
                    sibling["lfs"] = {"size": len(data), "sha256": sha, "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "_id": repo.commit[:24], "id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
            "gated": "manual" if repo.gated_token else False, "disabled": False, "tags": ["bert"],
            "library_name": "transformers", "siblings": siblings,
        }
        self._send(200, {"Content-Type": "application/json"}, json.dumps(info).encode(), send_body)

    def _resolve(self, repo_id: str, revision: str, filename: str, send_body: bool) -> None:
        repo = self._repo(repo_id, revision, send_body)
        if repo is None:
            return
        if repo.gated_token and self.headers.get("authorization") != f"Bearer {repo.gated_token}":
            message = f"Access to model {repo_id} is restricted. You must have access to it and be authenticated."
            self._error(401, "GatedRepo", message, send_body)
            return
        commit = {"X-Repo-Commit": repo.commit}
        data = repo.files.get(filename)
        if data is None:
            self._error(404, "EntryNotFound", "Entry not found", send_body, commit)
            return
        if is_lfs(filename):
            sha = hashlib.sha256(data).hexdigest()
            headers = {
                **commit, "X-Linked-Etag": f'"{sha}"', "X-Linked-Size": str(len(data)), "ETag": f'"{sha}"',
                "Location": f"{self.fake.cdn_url}/{sha}",
            }
            self._send(302, headers, b"", send_body)
            return
        headers = {**commit, "ETag": f'"{git_blob_sha1(data)}"', "Content-Type": "application/octet-stream"}
        self._send(200, headers, data, send_body)

    def _cdn(self, sha: str, send_body: bool) -> None:
        for repo in self.fake.repos.values():
            for data in repo.files.values():
                if hashlib.sha256(data).hexdigest() == sha:
                    self._send(200, {"ETag": f'"{sha}"', "Content-Type": "application/octet-stream"}, data, send_body)
                    return
        self._send(404, {}, b"", send_body)

    def _error(self, status: int, code: str | None, message: str, send_body: bool, extra: dict | None = None) -> None:
        headers = {**(extra or {}), "Content-Type": "application/json", "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, headers, json.dumps({"error": message}).encode(), send_body)

    def _send(self, status: int, headers: dict[str, str], body: bytes, send_body: bool) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if send_body:
            self.wfile.write(body)
