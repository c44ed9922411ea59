"""A tiny fake Hugging Face Hub, so tests run huggingface_hub's real client code with no network.

It serves repos from a folder laid out as `root/{datasets,models}/<owner>/<name>/<files>`; each repo has one branch,
`main`, whose commit sha is a hash of its files (so it changes when they do). Endpoints, as huggingface_hub 2.x
calls them:

    GET      /api/{datasets,models}/<repo>[/revision/<rev>]      repo_info, dataset_info, model_info
    GET      /api/{datasets,models}/<repo>/tree/<rev>[/<path>]   list_repo_tree, list_repo_files (paged by cursor)
    HEAD|GET /[datasets/]<repo>/resolve/<rev>/<path>              hf_hub_download: ETag, X-Repo-Commit, Range
    GET      /static/<name>                                        plain files (e.g. the CORE eval bundle)
    POST     /api/repos/create                                     create_repo (409 if it exists, as the Hub does)
    POST     /api/{datasets,models}/<repo>/preupload/<rev>         upload modes: always "regular" (no LFS, no Xet)
    POST     /api/{datasets,models}/<repo>/commit/<rev>            create_commit, upload_folder: files inline (base64)
    POST     /api/validate-yaml                                    a model card's metadata: always valid

Errors carry the Hub's X-Error-Code header (RepoNotFound, RevisionNotFound, EntryNotFound), which is what makes the
client raise RepositoryNotFoundError, RevisionNotFoundError and EntryNotFoundError. Every request is kept in `log`.
Knobs for failure tests: `throttle` slows file bodies down, `break_bodies(n)` cuts the next n file bodies off
mid-way (the connection drops), `fail_requests(n)` answers the next n file GETs with an HTTP error (both knobs act on
/resolve/ and /static/ alike).

    with FakeHub(tmp_path) as hub:                       # hub.url -> http://127.0.0.1:PORT, for HF_ENDPOINT
        hub.add_files("models/me/tiny", {"config.json": "{}"})
        texts = hub.add_shard_dataset("me/corpus", num_shards=4)     # datasets/me/corpus/shard_0000{0..3}.parquet
        hub.add_static("eval_bundle.zip", b"garbage", zip_bytes)   # 1st GET: garbage, later GETs: zip_bytes
        HfApi().upload_folder(repo_id="me/up", folder_path=...)    # lands in hub.root / "models/me/up"

Uploads keep to the simple path: every file is committed inline, whatever its size (the client is told "regular"),
so the fake needs neither LFS nor Xet (tests set HF_HUB_DISABLE_XET).
"""

import base64
import hashlib
import io
import json
import random
import re
import shutil
import string
import sys
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

CHUNK = 16 * 1024  # file bodies are written (and throttled) in chunks of this size


@dataclass
class Request:
    method: str
    path: str  # the URL path, percent-decoded, without the query string
    query: dict
    headers: dict  # names lowercased
    status: int = 0  # filled in once answered
    body: bytes = b""  # of POST requests


class FakeHub:
    """The server and its state; start()/stop() it, or use it as a context manager."""

    def __init__(self, root):
        self.root = Path(root)
        self.page_size = 1000  # tree listings longer than this come in pages, like the Hub's
        self.throttle = 0.0  # seconds slept before each CHUNK of a file body
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._breaks = []  # fractions at which the next file bodies are cut off
        self._failures = []  # statuses for the next file GETs
        self._etags = {}  # (path, size, mtime_ns) -> git blob sha1
        self._static = {}  # name -> bodies still to serve in turn (the last one stays)
        self._server = None

    # ---- lifecycle -------------------------------------------------------------------------------------------------

    def start(self) -> "FakeHub":
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.hub = self
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---- content ---------------------------------------------------------------------------------------------------

    def repo_dir(self, repo: str) -> Path:
        """The folder of `datasets/<owner>/<name>` or `models/<owner>/<name>` (created if missing)."""
        path = self.root / repo
        path.mkdir(parents=True, exist_ok=True)
        return path

    def add_files(self, repo: str, files: dict) -> Path:
        """Write {path in repo: bytes or str} into a repo; returns the repo's folder."""
        folder = self.repo_dir(repo)
        for name, content in files.items():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            data = content.encode() if isinstance(content, str) else content
            (folder / name).write_bytes(data)
        return folder

    def add_shard_dataset(self, repo_id: str, num_shards: int = 4, docs_per_shard: int = 20, doc_chars: int = 300,
                          seed: int = 0) -> list[list[str]]:
        """A dataset repo of shard_00000.parquet … written by primechat's write_shard, plus a README.md.

        Documents are random letters (they compress little, so bodies are big enough to cut or throttle).
        Returns each shard's texts, in shard order.
        """
        from primechat.data.shards import shard_name, write_shard

        rng = random.Random(seed)
        folder = self.add_files(f"datasets/{repo_id}", {"README.md": f"# {repo_id}\n"})
        texts = [["".join(rng.choices(string.ascii_lowercase + " ", k=doc_chars)) for _ in range(docs_per_shard)]
                 for _ in range(num_shards)]
        for index, shard in enumerate(texts):
            write_shard(shard, folder / shard_name(index))
        return texts

    def add_static(self, name: str, *bodies: bytes) -> str:
        """Serve bodies at /static/<name>, one per GET in turn, the last one from then on; returns the URL."""
        self._static[name] = list(bodies)
        return f"{self.url}/static/{name}"

    # ---- misbehaviour and the request log ---------------------------------------------------------------------------

    def break_bodies(self, n: int, at: float = 0.5) -> None:
        """Drop the connection after fraction `at` of each of the next n file bodies (GET on /resolve/)."""
        with self._lock:
            self._breaks += [at] * n

    def fail_requests(self, n: int, status: int = 500) -> None:
        """Answer the next n file GETs with `status` instead of the file."""
        with self._lock:
            self._failures += [status] * n

    def requests(self, method: str | None = None, contains: str = "") -> list[Request]:
        """Logged requests with this method (any if None) whose path contains `contains`."""
        return [r for r in list(self.log) if (method is None or r.method == method) and contains in r.path]

    def _next(self, queue: list):
        with self._lock:
            return queue.pop(0) if queue else None

    # ---- repo state ------------------------------------------------------------------------------------------------

    def etag(self, path: Path) -> str:
        """The file's git blob sha1, which is what the Hub uses as ETag and tree `oid` for files kept in git."""
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._etags:
            digest = hashlib.sha1(b"blob %d\0" % st.st_size)
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            self._etags[key] = digest.hexdigest()
        return self._etags[key]

    def repo_files(self, folder: Path) -> dict[str, Path]:
        """{path in repo: file} of a repo folder, sorted by path."""
        return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}

    def commit(self, files: dict[str, Path]) -> str:
        listing = "".join(f"{name}\0{self.etag(p)}\n" for name, p in files.items())
        return hashlib.sha1(listing.encode()).hexdigest()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self):
        # HTTPServer.server_bind looks up the host's fully qualified name, which can stall on a machine offline.
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request, client_address):
        # Clients that hang up mid-answer (a killed download) are part of the tests; anything else is a bug here.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


_REPO = r"(?P<owner>[^/]+)/(?P<name>[^/]+)"
_RESOLVE = re.compile(rf"^/(?:(?P<type>datasets)/)?{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_API = re.compile(rf"^/api/(?P<type>datasets|models)/{_REPO}(?:/(?P<op>revision|tree)/(?P<rev>[^/]+)(?P<path>/.*)?)?$")
_UPLOAD = re.compile(rf"^/api/(?P<type>datasets|models)/{_REPO}/(?P<op>preupload|commit)/(?P<rev>[^/]+)$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's connection pool expects

    def log_message(self, format, *args):
        pass

    def do_HEAD(self):
        self.route()

    def do_GET(self):
        self.route()

    def do_POST(self):
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.request_record = Request(self.command, unquote(url.path), parse_qs(url.query),
                                      {k.lower(): v for k, v in self.headers.items()}, body=body)
        self.hub.log.append(self.request_record)
        if url.path == "/api/repos/create":
            return self.create_repo(json.loads(body))
        if url.path == "/api/validate-yaml":
            return self.json({"errors": [], "warnings": []})
        if m := _UPLOAD.match(url.path):
            repo = f"{m['type']}/{unquote(m['owner'])}/{unquote(m['name'])}"
            if unquote(m["rev"]) != "main":
                return self.error(404, "RevisionNotFound", f"Invalid rev id: {unquote(m['rev'])}")
            if not (self.hub.root / repo).is_dir():
                return self.error(404, "RepoNotFound", "Repository not found")
            return self.preupload(json.loads(body)) if m["op"] == "preupload" else self.commit_files(repo, body)
        self.error(404, None, f"the fake hub does not serve {self.command} {url.path}")

    def route(self):
        url = urlsplit(self.path)
        self.request_record = Request(self.command, unquote(url.path), parse_qs(url.query),
                                      {k.lower(): v for k, v in self.headers.items()})
        self.hub.log.append(self.request_record)
        if url.path.startswith("/static/"):
            return self.static(unquote(url.path.removeprefix("/static/")))
        if m := _RESOLVE.match(url.path):
            return self.resolve(f"{m['type'] or 'models'}/{unquote(m['owner'])}/{unquote(m['name'])}",
                                unquote(m["rev"]), unquote(m["path"]))
        if m := _API.match(url.path):
            repo = f"{m['type']}/{unquote(m['owner'])}/{unquote(m['name'])}"
            return self.api(repo, m["op"], unquote(m["rev"] or "main"), unquote(m["path"] or "").strip("/"))
        self.error(404, None, f"the fake hub does not serve {self.command} {url.path}")

    @property
    def hub(self) -> FakeHub:
        return self.server.hub

    # ---- answers ---------------------------------------------------------------------------------------------------

    def answer(self, status: int, headers: dict, body: bytes = b""):
        self.request_record.status = status
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, str(value))
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, obj, headers: dict | None = None):
        self.answer(200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(obj).encode())

    def error(self, status: int, code: str | None, message: str, headers: dict | None = None):
        headers = {"Content-Type": "application/json", "X-Error-Message": message, **(headers or {})}
        if code:
            headers["X-Error-Code"] = code
        self.answer(status, headers, json.dumps({"error": message}).encode())

    def open_repo(self, repo: str, rev: str):
        """(files, commit sha) of a repo at `rev`, or None after answering with the Hub's error."""
        folder = self.hub.root / repo
        if not folder.is_dir():
            self.error(404, "RepoNotFound", "Repository not found")
            return None
        files = self.hub.repo_files(folder)
        sha = self.hub.commit(files)
        if rev not in ("main", sha):
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None
        return files, sha

    def resolve(self, repo: str, rev: str, path: str):
        opened = self.open_repo(repo, rev)
        if opened is None:
            return
        files, sha = opened
        if path not in files:
            return self.error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
        file = files[path]
        size = file.stat().st_size
        headers = {"ETag": f'"{self.hub.etag(file)}"', "X-Repo-Commit": sha, "Accept-Ranges": "bytes",
                   "Content-Type": "application/octet-stream"}
        if self.command == "HEAD":
            return self.answer(200, {**headers, "Content-Length": size})
        if status := self.hub._next(self.hub._failures):
            return self.error(status, None, "the fake hub was told to fail this request")
        start, end, status = 0, size - 1, 200
        if m := re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", "")):
            start, end, status = int(m[1]), min(int(m[2] or size - 1), size - 1), 206
            if start >= size:
                return self.answer(416, {**headers, "Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self.send_body(file, start, end + 1, status, headers)

    def static(self, name: str):
        with self.hub._lock:
            bodies = self.hub._static.get(name)
            body = (bodies.pop(0) if len(bodies) > 1 else bodies[0]) if bodies else None
        if body is None:
            return self.error(404, None, f"no static file {name}")
        if self.command == "HEAD":
            return self.answer(200, {"Content-Length": len(body)})
        if status := self.hub._next(self.hub._failures):
            return self.error(status, None, "the fake hub was told to fail this request")
        self.send_body(body, 0, len(body), 200, {"Content-Type": "application/octet-stream"})

    def send_body(self, file: Path | bytes, start: int, stop: int, status: int, headers: dict):
        """Send file[start:stop] (a file, or bytes in memory), throttled or cut off as the hub's knobs say."""
        cut = self.hub._next(self.hub._breaks)
        stop_at = stop if cut is None else start + int((stop - start) * cut)
        self.answer(status, {**headers, "Content-Length": stop - start})
        with (io.BytesIO(file) if isinstance(file, bytes) else open(file, "rb")) as f:
            f.seek(start)
            pos = start
            while pos < stop_at:
                if self.hub.throttle:
                    time.sleep(self.hub.throttle)
                chunk = f.read(min(CHUNK, stop_at - pos))
                self.wfile.write(chunk)
                self.wfile.flush()
                pos += len(chunk)
        if cut is not None:
            self.close_connection = True  # the client sees the body end early, as when a network drops

    def create_repo(self, payload: dict):
        kind = {"model": "models", "dataset": "datasets"}.get(payload.get("type") or "model")
        if kind is None:
            return self.error(400, None, f"the fake hub has no {payload.get('type')} repos")
        repo_id = f"{payload['organization']}/{payload['name']}" if payload.get("organization") else payload["name"]
        folder = self.hub.root / kind / repo_id
        url = f"{self.hub.url}/{'datasets/' if kind == 'datasets' else ''}{repo_id}"
        if folder.is_dir():
            return self.answer(409, {"Content-Type": "application/json", "X-Error-Message": "repo exists"},
                               json.dumps({"error": "You already created this repo", "url": url}).encode())
        folder.mkdir(parents=True)
        self.json({"url": url, "name": repo_id, "id": repo_id})

    def preupload(self, payload: dict):
        self.json({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                             for f in payload.get("files", [])]})

    def commit_files(self, repo: str, body: bytes):
        """Apply a commit's NDJSON lines: header, file (base64 content), deletedFile, deletedFolder."""
        folder = self.hub.root / repo
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "file":
                target = folder / value["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                data = value["content"].encode()
                target.write_bytes(base64.b64decode(data) if value.get("encoding") == "base64" else data)
            elif key == "deletedFile":
                (folder / value["path"]).unlink(missing_ok=True)
            elif key == "deletedFolder":
                shutil.rmtree(folder / value["path"], ignore_errors=True)
            elif key != "header":
                return self.error(400, None, f"the fake hub does not take {key!r} in a commit (no LFS)")
        sha = self.hub.commit(self.hub.repo_files(folder))
        self.json({"commitUrl": f"{self.hub.url}/{repo.removeprefix('models/')}/commit/{sha}", "commitOid": sha,
                   "pullRequestUrl": None})

    def api(self, repo: str, op: str | None, rev: str, path: str):
        opened = self.open_repo(repo, rev)
        if opened is None:
            return
        files, sha = opened
        headers = {"X-Repo-Commit": sha}
        if op == "tree":
            return self.tree(files, sha, path, headers)
        owner, name = repo.split("/")[1:]
        self.json({"id": f"{owner}/{name}", "author": owner, "sha": sha, "private": False, "disabled": False,
                   "gated": False, "downloads": 0, "likes": 0, "tags": [],
                   "lastModified": "2025-01-01T00:00:00.000Z", "createdAt": "2025-01-01T00:00:00.000Z",
                   "siblings": [{"rfilename": p, "size": f.stat().st_size, "blobId": self.hub.etag(f)}
                                for p, f in files.items()]}, headers)

    def tree(self, files: dict[str, Path], sha: str, path: str, headers: dict):
        folders = {"/".join(p.split("/")[:i]) for p in files for i in range(1, p.count("/") + 1)}
        if path and path not in folders:
            return self.error(404, "EntryNotFound", f"{path} is not a folder on this revision", headers)
        prefix = f"{path}/" if path else ""
        recursive = self.request_record.query.get("recursive", ["false"])[0].lower() in ("true", "1")
        entries = []
        for p in sorted(set(files) | folders):
            if p.startswith(prefix) and (recursive or "/" not in p[len(prefix):]):
                if p in files:
                    entries.append({"type": "file", "oid": self.hub.etag(files[p]), "size": files[p].stat().st_size,
                                    "path": p})
                else:
                    entries.append({"type": "directory", "oid": hashlib.sha1(f"{sha}/{p}".encode()).hexdigest(),
                                    "size": 0, "path": p})
        cursor = int(self.request_record.query.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + self.hub.page_size]
        if cursor + self.hub.page_size < len(entries):
            query = f"recursive={str(recursive).lower()}&cursor={cursor + self.hub.page_size}"
            headers = {**headers, "Link": f'<{self.hub.url}{urlsplit(self.path).path}?{query}>; rel="next"'}
        self.json(page, headers)
