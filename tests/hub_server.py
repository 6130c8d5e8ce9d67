"""A Hugging Face Hub-compatible server on 127.0.0.1 for tests, and the client settings that point at it.

Serves the part of the Hub's HTTP API that ``huggingface_hub`` (2.x) calls for ``create_repo``,
``create_branch``, ``upload_folder``/``create_commit`` (preupload, the git-LFS batch API with its basic
transfer and verify, the ndjson commit, pull requests), ``repo_info``/``model_info``, ``list_repo_tree``,
``hf_hub_download`` and ``snapshot_download`` (the ``/resolve/`` route with ``X-Repo-Commit``, ``ETag``,
``X-Linked-Etag``/``X-Linked-Size`` for LFS files), and ``datasets``' reads of a dataset repo
(``paths-info``, ``/resolve/``). It never advertises Xet storage: no ``X-Xet-*`` headers, LFS batch answers
``"transfer": "basic"``. Uploading through LFS still needs the client told not to use Xet (``hf_xet``, when
installed, is used unconditionally for LFS-mode files): :func:`hub_client` sets ``HF_HUB_DISABLE_XET=1``.

Storage: file contents are written under a temporary directory (git blobs by their git SHA-1, LFS objects
by their SHA-256, as the Hub's storage keys them); repositories, branches, commits and pull requests are
kept in memory (a commit is the full ``{path: file}`` map). As the Hub does, files matching the
``.gitattributes`` LFS patterns (``*.safetensors``, ``*.parquet``, ...) or of 10 MiB and more go through LFS.

Use::

    with HubServer() as hub, hub_client(hub, tmp_path):
        ...  # huggingface_hub (and everything built on it) talks to hub.endpoint

Test hooks: ``hub.fail(method, path_regex, status=500, times=1)`` makes matching requests fail;
``hub.hold(method, path_regex)`` makes them wait until the returned event is set; ``hub.requests`` records ``(method, path)`` of every request; ``hub.lfs_uploads`` the SHA-256 of every
object PUT through the LFS basic transfer; ``hub.tokens`` maps accepted tokens to user names (a private repo
is visible only with its owner's token, as on the Hub, which answers 401 ``RepoNotFound`` otherwise).
"""

from __future__ import annotations

import base64
import contextlib
import fnmatch
import hashlib
import itertools
import json
import os
import re
import shutil
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

LFS_PATTERNS = ("*.bin", "*.safetensors", "*.model", "*.parquet", "*.arrow", "*.pt", "*.pth", "*.h5", "*.msgpack",
                "*.npy", "*.npz", "*.onnx", "*.zip", "*.gz", "*.tar", "*tfevents*")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub stores files this large in LFS whatever their name
GITATTRIBUTES = "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in LFS_PATTERNS).encode()
DEFAULT_USER = "test-user"
REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


class HubError(Exception):
    """An HTTP error answer: status, ``X-Error-Code`` (what huggingface_hub maps to its exception classes)."""

    def __init__(self, status: int, message: str, code: str | None = None, extra: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.extra = status, message, code, extra or {}


class _Repo:
    def __init__(self, repo_type: str, repo_id: str, private: bool, owner: str):
        self.type, self.id, self.private, self.owner = repo_type, repo_id, private, owner
        self.branches: dict[str, str] = {}  # name -> commit id
        self.tags: dict[str, str] = {}
        self.prs: list[str] = []  # refs/pr/{i+1} -> commit id
        self.created = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


class HubState:
    """Repositories, commits and objects; every method runs under ``self.lock``."""

    def __init__(self, root: str):
        self.root = root
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], _Repo] = {}
        self.commits: dict[str, dict] = {}  # id -> {"parent", "files": {path: entry}, "title", "date"}
        self._counter = itertools.count()
        os.makedirs(os.path.join(root, "blobs"), exist_ok=True)
        os.makedirs(os.path.join(root, "lfs"), exist_ok=True)

    # -- objects ------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> dict:
        sha = git_blob_sha1(data)
        with open(os.path.join(self.root, "blobs", sha), "wb") as f:
            f.write(data)
        return {"oid": sha, "size": len(data), "lfs": None}

    def lfs_path(self, sha256: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise HubError(400, f"invalid LFS oid {sha256!r}")
        return os.path.join(self.root, "lfs", sha256)

    def has_lfs(self, sha256: str, size: int | None = None) -> bool:
        p = self.lfs_path(sha256)
        return os.path.isfile(p) and (size is None or os.path.getsize(p) == size)

    def lfs_entry(self, sha256: str, size: int) -> dict:
        pointer = lfs_pointer(sha256, size)
        return {"oid": git_blob_sha1(pointer), "size": size, "lfs": {"oid": sha256, "size": size,
                                                                      "pointerSize": len(pointer)}}

    def content_path(self, entry: dict) -> str:
        if entry["lfs"]:
            return self.lfs_path(entry["lfs"]["oid"])
        return os.path.join(self.root, "blobs", entry["oid"])

    # -- repos and revisions ------------------------------------------------------------------
    def new_commit(self, parent: str | None, files: dict, title: str) -> str:
        n = next(self._counter)
        cid = hashlib.sha1(json.dumps([parent, sorted(files), title, n, time.time()]).encode()).hexdigest()
        self.commits[cid] = {"parent": parent, "files": files, "title": title,
                             "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())}
        return cid

    def create_repo(self, repo_type: str, repo_id: str, private: bool, owner: str) -> _Repo:
        key = (repo_type, repo_id)
        if key in self.repos:
            raise HubError(409, f"You already created this {repo_type} repo", extra={"url": repo_id})
        repo = _Repo(repo_type, repo_id, private, owner)
        first = self.new_commit(None, {".gitattributes": self.put_blob(GITATTRIBUTES)}, "initial commit")
        repo.branches["main"] = first
        self.repos[key] = repo
        return repo

    def repo(self, repo_type: str, repo_id: str, user: str | None) -> _Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None or (repo.private and user != repo.owner):
            # The Hub does not say whether a private repo exists: 401 RepoNotFound either way.
            raise HubError(401 if user is None else 404, f"Repository Not Found for url: {repo_id}", "RepoNotFound")
        return repo

    def resolve(self, repo: _Repo, revision: str) -> str:
        """Commit id of ``revision``: a branch, a tag, ``refs/pr/N``, or a (full) commit id of this repo."""
        revision = revision or "main"
        for name in (revision, revision.removeprefix("refs/heads/")):
            if name in repo.branches:
                return repo.branches[name]
        if revision in repo.tags:
            return repo.tags[revision]
        m = re.fullmatch(r"refs/pr/(\d+)", revision)
        if m and 0 < int(m.group(1)) <= len(repo.prs):
            return repo.prs[int(m.group(1)) - 1]
        if revision in self.commits and self._reachable(repo, revision):
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _reachable(self, repo: _Repo, cid: str) -> bool:
        for head in [*repo.branches.values(), *repo.tags.values(), *repo.prs]:
            c = head
            while c is not None:
                if c == cid:
                    return True
                c = self.commits[c]["parent"]
        return False

    def files(self, repo: _Repo, revision: str) -> tuple[str, dict]:
        cid = self.resolve(repo, revision)
        return cid, self.commits[cid]["files"]

    def upload_mode(self, path: str, size: int, files: dict) -> str:
        patterns = LFS_PATTERNS
        attrs = files.get(".gitattributes")
        if attrs is not None:
            with open(self.content_path(attrs), "rb") as f:
                patterns = tuple(line.split()[0] for line in f.read().decode().splitlines()
                                 if "filter=lfs" in line and line.split())
        name = path.rsplit("/", 1)[-1]
        if size >= LFS_MIN_SIZE or any(fnmatch.fnmatch(name, p) or fnmatch.fnmatch(path, p) for p in patterns):
            return "lfs"
        return "regular"


class HubServer:
    """The server (a ``ThreadingHTTPServer`` on a free port of 127.0.0.1, in a daemon thread); a context
    manager. ``endpoint`` is its base URL. Stored data lives in ``root`` (a temporary directory, removed on
    exit unless given)."""

    def __init__(self, root: str | None = None):
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="stcore-hub-")
        self.state = HubState(self.root)
        self.tokens = {"hf_test_token": DEFAULT_USER}
        self.requests: list[tuple[str, str]] = []
        self.lfs_uploads: list[str] = []
        self._failures: list[list] = []  # [method, regex, status, times left]
        self._holds: list[tuple] = []  # (method, regex, event)
        self.held = 0
        self._httpd = None
        self._thread = None

    @property
    def endpoint(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def fail(self, method: str, path_regex: str, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` requests ``method path`` (``path_regex`` searched in the path) with ``status``."""
        with self.state.lock:
            self._failures.append([method.upper(), re.compile(path_regex), status, times])

    def _injected_failure(self, method: str, path: str) -> int | None:
        with self.state.lock:
            for f in self._failures:
                if f[0] == method and f[3] > 0 and f[1].search(path):
                    f[3] -= 1
                    return f[2]
        return None

    def __enter__(self) -> HubServer:
        server = self

        class Handler(_Handler):
            hub = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hub-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers for tests ---------------------------------------------------------------------
    def repo_files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict:
        """``{path: entry}`` of ``repo_id`` at ``revision`` (entry: ``oid``, ``size``, ``lfs`` or None)."""
        with self.state.lock:
            return dict(self.state.files(self.state.repos[(repo_type, repo_id)], revision)[1])

    def history(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> list[tuple[str, str]]:
        """``(commit id, title)`` from ``revision`` back to the repo's first commit, newest first."""
        with self.state.lock:
            c = self.state.resolve(self.state.repos[(repo_type, repo_id)], revision)
            out = []
            while c is not None:
                out.append((c, self.state.commits[c]["title"]))
                c = self.state.commits[c]["parent"]
            return out

    def read(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "model") -> bytes:
        """The content of ``path`` in ``repo_id`` at ``revision``."""
        with self.state.lock, open(self.state.content_path(self.repo_files(repo_id, revision, repo_type)[path]),
                                   "rb") as f:
            return f.read()

    def hold(self, method: str, path_regex: str) -> threading.Event:
        """Make matching requests wait (each until the returned event is set); ``held`` counts arrivals."""
        gate = threading.Event()
        with self.state.lock:
            self._holds.append((method.upper(), re.compile(path_regex), gate))
        return gate

    def _wait_if_held(self, method: str, path: str) -> None:
        with self.state.lock:
            gates = [g for m, rx, g in self._holds if m == method and rx.search(path) and not g.is_set()]
            if gates:
                self.held += 1
        for g in gates:
            g.wait(timeout=120)


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format, *args):  # noqa: A002 - quiet; tests read hub.requests
        pass

    # -- plumbing ------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(self, status: int, body: bytes = b"", headers: dict | None = None, content_type="application/json"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, status: int = 200, headers: dict | None = None):
        self._send(status, json.dumps(obj).encode(), headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        token = auth[7:] if auth.lower().startswith("bearer ") else None
        if token is not None and token not in self.hub.tokens:
            raise HubError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens.get(token) if token else None

    def _dispatch(self):
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.hub.requests.append((self.command, path))
        body = self._body() if self.command in ("POST", "PUT") else b""
        self.hub._wait_if_held(self.command, path)
        try:
            injected = self.hub._injected_failure(self.command, path)
            if injected is not None:
                raise HubError(injected, f"injected failure ({injected}) for {self.command} {path}")
            for method, pattern, fn in _ROUTES:
                m = re.fullmatch(pattern, path)
                if m and (method == self.command or (method == "GET" and self.command == "HEAD")):
                    return fn(self, *[g if g is None else unquote(g) for g in m.groups()], query=query, body=body)
            raise HubError(404, f"no route for {self.command} {path}")
        except HubError as e:
            headers = {"X-Error-Message": e.message}
            if e.code:
                headers["X-Error-Code"] = e.code
            self._json({"error": e.message, **e.extra}, e.status, headers)
        except Exception as e:  # noqa: BLE001 - a server bug answers 500 with its message, not a dropped connection
            self._json({"error": f"{type(e).__name__}: {e}"}, 500, {"X-Error-Message": f"{type(e).__name__}: {e}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    def _base(self) -> str:
        return self.hub.endpoint

    # -- repositories --------------------------------------------------------------------------
    def create_repo(self, *, query, body):
        user = self._user()
        if user is None:
            raise HubError(401, "You must be authenticated to create a repo (pass a token)")
        payload = json.loads(body)
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or user}/{payload['name']}"
        private = payload.get("visibility") == "private" or bool(payload.get("private"))
        url = f"{self._base()}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub.state.lock:
            try:
                self.hub.state.create_repo(repo_type, repo_id, private, user)
            except HubError as e:
                e.extra = {"url": url}
                raise
        self._json({"url": url, "name": repo_id, "id": repo_id})

    def repo_info(self, kind, repo_id, revision=None, *, query, body):
        st = self.hub.state
        with st.lock:
            repo = st.repo(REPO_TYPES[kind], repo_id, self._user())
            cid, files = st.files(repo, revision or "main")
            commit = st.commits[cid]
            siblings = []
            for path, e in sorted(files.items()):
                s = {"rfilename": path}
                if "blobs" in query:
                    s.update(size=e["size"], blobId=e["oid"])
                    if e["lfs"]:
                        s["lfs"] = {"sha256": e["lfs"]["oid"], "size": e["size"], "pointerSize": e["lfs"]["pointerSize"]}
                siblings.append(s)
            self._json({"_id": repo_id, "id": repo_id, "author": repo_id.split("/")[0], "sha": cid,
                        "private": repo.private, "gated": False, "disabled": False, "downloads": 0, "likes": 0,
                        "tags": [], "lastModified": commit["date"], "createdAt": repo.created,
                        "siblings": siblings, "cardData": {}})

    def tree(self, kind, repo_id, revision, sub="", *, query, body):
        st = self.hub.state
        recursive = (query.get("recursive") or ["false"])[0].lower() in ("true", "1")
        sub = (sub or "").strip("/")
        with st.lock:
            cid, files = st.files(st.repo(REPO_TYPES[kind], repo_id, self._user()), revision)
            out, dirs = [], set()
            prefix = sub + "/" if sub else ""
            if sub and not any(p.startswith(prefix) for p in files):
                raise HubError(404, f"{sub} does not exist on {revision}", "EntryNotFound")
            for path, e in sorted(files.items()):
                if not path.startswith(prefix):
                    continue
                rest = path[len(prefix):].split("/")
                for i in range(1, len(rest) if recursive else min(len(rest), 2)):
                    dirs.add(prefix + "/".join(rest[:i]))
                if recursive or len(rest) == 1:
                    out.append(_file_json(path, e))
            out += [{"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d}
                    for d in sorted(dirs)]
        self._json(out)

    def paths_info(self, kind, repo_id, revision, *, query, body):
        st = self.hub.state
        form = parse_qs(body.decode()) if body and not body.lstrip().startswith(b"{") else None
        paths = form.get("paths", []) if form is not None else json.loads(body or b"{}").get("paths", [])
        with st.lock:
            cid, files = st.files(st.repo(REPO_TYPES[kind], repo_id, self._user()), revision)
            out = []
            for p in paths:
                p = p.strip("/")
                if p in files:
                    out.append(_file_json(p, files[p]))
                elif any(f.startswith(p + "/") for f in files) or p == "":
                    out.append({"type": "directory", "oid": hashlib.sha1(p.encode()).hexdigest(), "size": 0,
                                "path": p})
        self._json(out)

    def create_branch(self, kind, repo_id, branch, *, query, body):
        st = self.hub.state
        payload = json.loads(body or b"{}")
        with st.lock:
            repo = st.repo(REPO_TYPES[kind], repo_id, self._user())
            if branch in repo.branches:
                raise HubError(409, f"Reference already exists: refs/heads/{branch}")
            repo.branches[branch] = st.resolve(repo, payload.get("startingPoint") or "main")
        self._json({})

    def refs(self, kind, repo_id, *, query, body):
        st = self.hub.state
        with st.lock:
            repo = st.repo(REPO_TYPES[kind], repo_id, self._user())
            self._json({"branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c}
                                     for n, c in repo.branches.items()],
                        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
                        "converts": [],
                        "pullRequests": [{"name": f"{i + 1}", "ref": f"refs/pr/{i + 1}", "targetCommit": c}
                                         for i, c in enumerate(repo.prs)]})

    def validate_yaml(self, *, query, body):
        self._json({"errors": [], "warnings": []})

    def whoami(self, *, query, body):
        user = self._user()
        if user is None:
            raise HubError(401, "Invalid user token")
        self._json({"type": "user", "name": user, "fullname": user, "orgs": [],
                    "auth": {"accessToken": {"role": "write"}}})

    # -- uploads -------------------------------------------------------------------------------
    def preupload(self, kind, repo_id, revision, *, query, body):
        st = self.hub.state
        payload = json.loads(body)
        with st.lock:
            repo = st.repo(REPO_TYPES[kind], repo_id, self._user())
            files = st.files(repo, "main" if query.get("create_pr") else revision)[1]
            out = []
            for f in payload["files"]:
                mode = st.upload_mode(f["path"], f["size"], files)
                old = files.get(f["path"])
                oid = None if old is None else (old["lfs"]["oid"] if old["lfs"] else old["oid"])
                out.append({"path": f["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self._json({"files": out, "commitOid": None})

    def lfs_batch(self, prefix, repo_id, *, query, body):
        st = self.hub.state
        repo_type = REPO_TYPES[prefix.rstrip("/")] if prefix else "model"
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise HubError(400, "only the upload operation is served")
        with st.lock:
            st.repo(repo_type, repo_id, self._user())
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if not st.has_lfs(obj["oid"], obj["size"]):
                href = f"{self._base()}/_lfs/{obj['oid']}"
                entry["actions"] = {"upload": {"href": href, "header": {}},
                                    "verify": {"href": href + "/verify", "header": {}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def lfs_put(self, oid, *, query, body):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"LFS object does not match its oid {oid}")
        tmp = self.hub.state.lfs_path(oid) + f".tmp-{threading.get_ident()}"
        with open(tmp, "wb") as f:
            f.write(body)
        os.replace(tmp, self.hub.state.lfs_path(oid))
        self.hub.lfs_uploads.append(oid)
        self._send(200)

    def lfs_verify(self, oid, *, query, body):
        payload = json.loads(body)
        if not self.hub.state.has_lfs(oid, payload.get("size")):
            raise HubError(404, f"LFS object {oid} is missing or has another size")
        self._json({})

    def commit(self, kind, repo_id, revision, *, query, body):
        st = self.hub.state
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next((x["value"] for x in lines if x["key"] == "header"), {})
        create_pr = (query.get("create_pr") or ["0"])[0] in ("1", "true")
        with st.lock:
            repo = st.repo(REPO_TYPES[kind], repo_id, self._user())
            if self._user() != repo.owner:
                raise HubError(403, f"You don't have the rights to create a commit on {repo_id}")
            base = "main" if create_pr else revision
            if not create_pr and base not in repo.branches and not re.fullmatch(r"refs/pr/\d+", base):
                raise HubError(404, f"Invalid rev id: {base}", "RevisionNotFound")
            parent, files = st.files(repo, base)
            if header.get("parentCommit") and header["parentCommit"] != parent:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            files = dict(files)
            for item in lines:
                key, v = item["key"], item["value"]
                if key == "file":
                    files[v["path"]] = st.put_blob(base64.b64decode(v["content"]))
                elif key == "lfsFile":
                    if not st.has_lfs(v["oid"], v["size"]):
                        raise HubError(422, f"LFS object {v['oid']} of {v['path']} was not uploaded")
                    files[v["path"]] = st.lfs_entry(v["oid"], v["size"])
                elif key == "deletedFile":
                    if files.pop(v["path"], None) is None:
                        raise HubError(404, f"A file with this name doesn't exist: {v['path']}", "EntryNotFound")
                elif key == "deletedFolder":
                    folder = v["path"].rstrip("/") + "/"
                    files = {p: e for p, e in files.items() if not p.startswith(folder)}
                elif key != "header":
                    raise HubError(400, f"unsupported commit operation {key!r}")
            cid = st.new_commit(parent, files, header.get("summary") or "commit")
            pr_url = None
            if create_pr:
                repo.prs.append(cid)
                pr_url = f"{self._base()}/{URL_PREFIX[repo.type]}{repo_id}/discussions/{len(repo.prs)}"
            elif base in repo.branches:
                repo.branches[base] = cid
            else:
                repo.prs[int(base.rsplit("/", 1)[1]) - 1] = cid
        self._json({"success": True, "commitOid": cid,
                    "commitUrl": f"{self._base()}/{URL_PREFIX[repo.type]}{repo_id}/commit/{cid}",
                    "pullRequestUrl": pr_url, "hookOutput": ""})

    # -- downloads -----------------------------------------------------------------------------
    def resolve(self, prefix, repo_id, revision, path, *, query, body):
        st = self.hub.state
        repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(prefix or "", "model")
        with st.lock:
            repo = st.repo(repo_type, repo_id, self._user())
            cid, files = st.files(repo, revision)
            entry = files.get(path)
            if entry is None:
                e = HubError(404, f"Entry not found: {path}", "EntryNotFound")
                self._json({"error": e.message}, 404, {"X-Error-Code": "EntryNotFound", "X-Error-Message": e.message,
                                                       "X-Repo-Commit": cid})
                return
            with open(st.content_path(entry), "rb") as f:
                data = f.read()
        headers = {"X-Repo-Commit": cid, "Accept-Ranges": "bytes"}
        if entry["lfs"]:
            headers.update({"ETag": f'"{entry["lfs"]["oid"]}"', "X-Linked-Etag": f'"{entry["lfs"]["oid"]}"',
                            "X-Linked-Size": str(entry["size"])})
        else:
            headers["ETag"] = f'"{entry["oid"]}"'
        rng = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range") or "")
        if rng and self.command == "GET":
            start, end = int(rng.group(1)), int(rng.group(2)) if rng.group(2) else len(data) - 1
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self._send(206, data[start:end + 1], headers, "application/octet-stream")
        self._send(200, data, headers, "application/octet-stream")


def _file_json(path: str, e: dict) -> dict:
    out = {"type": "file", "oid": e["oid"], "size": e["size"], "path": path}
    if e["lfs"]:
        out["lfs"] = dict(e["lfs"])
    return out


_KIND = r"(models|datasets|spaces)"
_REPO = r"([^/]+/[^/]+)"
_ROUTES = [
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("GET", rf"/api/{_KIND}/{_REPO}", _Handler.repo_info),
    ("GET", rf"/api/{_KIND}/{_REPO}/revision/(.+)", _Handler.repo_info),
    ("GET", rf"/api/{_KIND}/{_REPO}/tree/([^/]+)(?:/(.*))?", _Handler.tree),
    ("POST", rf"/api/{_KIND}/{_REPO}/paths-info/([^/]+)", _Handler.paths_info),
    ("GET", rf"/api/{_KIND}/{_REPO}/refs", _Handler.refs),
    ("POST", rf"/api/{_KIND}/{_REPO}/branch/([^/]+)", _Handler.create_branch),
    ("POST", rf"/api/{_KIND}/{_REPO}/preupload/([^/]+)", _Handler.preupload),
    ("POST", rf"/api/{_KIND}/{_REPO}/commit/([^/]+)", _Handler.commit),
    ("POST", r"/(datasets/|spaces/)?([^/]+/[^/]+)\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/_lfs/([0-9a-f]{64})", _Handler.lfs_put),
    ("POST", r"/_lfs/([0-9a-f]{64})/verify", _Handler.lfs_verify),
    ("GET", r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", _Handler.resolve),
]


# -- the client side -------------------------------------------------------------------------------
def client_env(hub: HubServer, home: str, token: str | None = "hf_test_token") -> dict:
    """Environment variables that point ``huggingface_hub`` (and transformers, sentence-transformers, datasets)
    in a *new* process at ``hub``, with its cache under ``home``: merge into ``os.environ`` for a subprocess."""
    env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": home, "HF_HUB_CACHE": os.path.join(home, "hub"),
           "HF_DATASETS_CACHE": os.path.join(home, "datasets"), "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0",
           "HF_HUB_DISABLE_PROGRESS_BARS": "1", "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
    if token is not None:
        env["HF_TOKEN"] = token
    return env


@contextlib.contextmanager
def hub_client(hub: HubServer, home: str, token: str | None = "hf_test_token"):
    """Point this process's ``huggingface_hub`` at ``hub`` for the duration of the block.

    ``huggingface_hub`` reads ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, ``HF_HOME``, ``HF_HUB_DISABLE_XET`` ... once,
    at import, into ``huggingface_hub.constants`` (and builds a module-level ``HfApi`` on that endpoint). So
    besides setting the environment variables (:func:`client_env`, for subprocesses started inside the block),
    this patches those constants, and the module-level ``HfApi``'s endpoint, and restores everything on exit.
    ``HF_HUB_DISABLE_XET``: with ``hf_xet`` installed the client sends LFS-mode files through Xet storage
    without asking the server; disabling it makes it use the git-LFS batch API this server serves.
    """
    import huggingface_hub.constants as c
    from huggingface_hub import hf_api

    env = client_env(hub, home, token)
    patches = {"ENDPOINT": hub.endpoint,
               "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
               "HF_HUB_OFFLINE": False, "HF_HUB_DISABLE_XET": True, "HF_HUB_DISABLE_TELEMETRY": True,
               "HF_HOME": home, "HF_HUB_CACHE": env["HF_HUB_CACHE"], "HUGGINGFACE_HUB_CACHE": env["HF_HUB_CACHE"],
               "HF_TOKEN_PATH": os.path.join(home, "token"),
               "HF_STORED_TOKENS_PATH": os.path.join(home, "stored_tokens")}
    saved_const = {k: getattr(c, k) for k in patches if hasattr(c, k)}
    saved_env = {k: os.environ.get(k) for k in [*env, "HF_TOKEN"]}
    saved_api_endpoint = hf_api.api.endpoint
    try:
        for k, v in patches.items():
            if k in saved_const:
                setattr(c, k, v)
        os.environ.pop("HF_TOKEN", None)
        os.environ.update(env)
        hf_api.api.endpoint = hub.endpoint
        yield hub
    finally:
        for k, v in saved_const.items():
            setattr(c, k, v)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        hf_api.api.endpoint = saved_api_endpoint

