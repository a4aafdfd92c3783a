"""A Hugging Face hub stand-in on 127.0.0.1 for tests: serves repositories made by the test, in the
hub's URL layout, to the real `huggingface_hub` client (point HF_ENDPOINT at `url`).

Endpoints: /api/{models,datasets}/<id>/revision/<rev> (repo info), .../tree/<rev> (file list),
/<id>/resolve/<rev>/<file> and /datasets/<id>/resolve/<rev>/<file> (file bytes with the commit and
ETag headers the client checks). Anything else is a 404. `requests` records every path asked for.
"""

from __future__ import annotations

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HubServer:
    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], tuple[str, dict[str, bytes]]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.do_GET()

            def do_GET(self) -> None:
                hub.requests.append(self.path)
                status, body, headers = hub.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def add_repo(self, repo_id: str, folder: Path, repo_type: str = "model") -> str:
        """Serve every file under `folder` as `repo_id`; returns the repository's commit hash."""
        files = {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
        sha = hashlib.sha1(repr(sorted((k, hashlib.sha1(v).hexdigest()) for k, v in files.items())).encode()).hexdigest()
        self.repos[(repo_type, repo_id)] = (sha, files)
        return sha

    def answer(self, path: str) -> tuple[int, bytes, dict[str, str]]:
        for (repo_type, repo_id), (sha, files) in self.repos.items():
            api = f"/api/{repo_type}s/{repo_id}/"
            if path.startswith(api + "revision/"):
                info = {"id": repo_id, "sha": sha, "siblings": [{"rfilename": name} for name in files]}
                return 200, json.dumps(info).encode(), {"Content-Type": "application/json"}
            if path.startswith(api + "tree/"):
                tree = [{"type": "file", "oid": hashlib.sha1(data).hexdigest(), "size": len(data), "path": name}
                        for name, data in files.items()]
                return 200, json.dumps(tree).encode(), {"Content-Type": "application/json"}
            resolve = f"{'' if repo_type == 'model' else '/datasets'}/{repo_id}/resolve/"
            if path.startswith(resolve):
                name = path[len(resolve):].split("/", 1)[1]
                if name in files:
                    data = files[name]
                    return 200, data, {"X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
        return 404, b'{"error": "not found"}', {"Content-Type": "application/json", "X-Error-Code": "RepoNotFound"}

    def __enter__(self) -> HubServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
