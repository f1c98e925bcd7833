"""A fake Hugging Face Hub on 127.0.0.1 for tests: the endpoints ``huggingface_hub.snapshot_download`` calls.

``FakeHub({(repo_id, revision): {path: bytes}})`` serves dataset repos:
``GET /api/datasets/{repo}/revision/{rev}`` (repo info with the commit sha), ``GET /api/datasets/{repo}/tree/{sha}``
(the file listing) and ``HEAD``/``GET /datasets/{repo}/resolve/{rev}/{path}`` (file metadata and bytes), with
the Hub's ``X-Error-Code`` answers for a missing repository, revision or file. ``requests`` logs every call.
``truncate``: file paths whose body is cut in half (the full ``Content-Length`` is announced, then the
connection closes), as a dropped transfer looks to the client.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self, repos: dict[tuple[str, str], dict[str, bytes]], *, truncate: tuple[str, ...] = ()):
        self.repos = repos
        self.truncate = set(truncate)
        self.requests: list[tuple[str, str]] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output clean
                pass

            def do_HEAD(self):
                hub.answer(self, with_body=False)

            def do_GET(self):
                hub.answer(self, with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def commit(repo: str, revision: str) -> str:
        return hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest()

    def _files(self, repo: str, revision: str) -> tuple[str, dict[str, bytes]] | tuple[None, None]:
        for (name, branch), files in self.repos.items():
            if name == repo and revision in (branch, self.commit(name, branch)):
                return self.commit(name, branch), files
        return None, None

    def answer(self, handler: BaseHTTPRequestHandler, *, with_body: bool) -> None:
        path = urlsplit(handler.path).path
        self.requests.append((handler.command, unquote(path)))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "datasets"] and len(parts) >= 6:
            repo, operation, revision, rest = "/".join(parts[2:4]), parts[4], unquote(parts[5]), parts[6:]
        elif parts[:1] == ["datasets"] and len(parts) >= 6 and parts[3] == "resolve":
            repo, operation, revision, rest = "/".join(parts[1:3]), "resolve", unquote(parts[4]), parts[5:]
        else:
            return self._error(handler, with_body, "RepoNotFound")
        if not any(name == repo for name, _ in self.repos):
            return self._error(handler, with_body, "RepoNotFound")
        sha, files = self._files(repo, revision)
        if files is None:
            return self._error(handler, with_body, "RevisionNotFound")
        if operation == "revision":
            info = {"id": repo, "sha": sha, "siblings": [{"rfilename": p} for p in files]}
            return self._send(handler, with_body, json.dumps(info).encode())
        if operation == "tree":
            prefix = unquote("/".join(rest))
            listing = [
                {"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": p}
                for p, data in sorted(files.items())
                if p.startswith(prefix)
            ]
            return self._send(handler, with_body, json.dumps(listing).encode())
        file = unquote("/".join(rest))
        if operation != "resolve" or file not in files:
            return self._error(handler, with_body, "EntryNotFound")
        data = files[file]
        headers = {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        if with_body and file in self.truncate:
            handler.close_connection = True
            return self._send(handler, with_body, data, headers, "application/octet-stream", cut=len(data) // 2)
        self._send(handler, with_body, data, headers, "application/octet-stream")

    @staticmethod
    def _send(
        handler, with_body, data: bytes, headers=None, content_type="application/json", code=200, cut=None
    ) -> None:
        handler.send_response(code)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if with_body:
            handler.wfile.write(data[:cut])

    def _error(self, handler, with_body, code: str) -> None:
        body = json.dumps({"error": code}).encode()
        self._send(handler, with_body, body, {"X-Error-Code": code, "X-Error-Message": code}, code=404)
