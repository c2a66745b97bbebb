#!/usr/bin/env python3
"""A small Hugging Face Hub for hubcap's tests, on 127.0.0.1 (standard library only).

    python3 hub_server.py PORT_FILE LOG_FILE SOURCE_DIR

It serves fixture folders under the Hub's URL scheme and headers:
  GET  /api/models/{org}/{name}/revision/{rev}  -> {"sha": commit, "siblings": [{"rfilename"}]}
  HEAD/GET /{org}/{name}/resolve/{rev}/{file}    -> small files: 200 with ETag (git blob sha1);
       *.safetensors are "LFS": 302 to /lfs/... with X-Linked-Etag (sha256) and X-Linked-Size
  GET  /lfs/{org}/{name}/{sha256}                -> the bytes, with Range support
Every response carries X-Repo-Commit. Repos with behaviours:
  test/stories, test/sharded, test/sharded2  plain
  test/gated     401 without "Authorization: Bearer secret"
  test/flaky     the first transfer of each LFS file is cut off halfway
  test/corrupt   the first transfer of each LFS file has a flipped byte
  test/badsum    every transfer of an LFS file has a flipped byte
  test/busy      the API answers 503 twice before it works
  test/binonly   only pytorch_model.bin weights
Each request is appended to LOG_FILE as "METHOD PATH RANGE".
"""
import hashlib
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT_FILE, LOG_FILE, SRC = sys.argv[1:4]
STORIES = os.path.join(SRC, "models/stories260K")
SHARDED = os.path.join(SRC, "tests/fixtures/models/llama_sharded")
MODEL_FILES = ["config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
               "tokenizer_config.json", "tokenizer.model", "special_tokens_map.json"]


def repo_files(repo):
    if repo in ("test/sharded", "test/sharded2"):
        return {f: os.path.join(SHARDED, f) for f in sorted(os.listdir(SHARDED)) if not f.startswith("reference")}
    if repo == "test/binonly":
        return {"config.json": os.path.join(STORIES, "config.json"),
                "pytorch_model.bin": os.path.join(STORIES, "model.safetensors")}
    files = {f: os.path.join(STORIES, f) for f in MODEL_FILES}
    files["pytorch_model.bin"] = os.path.join(STORIES, "model.safetensors")  # must never be fetched
    files["README.md"] = os.path.join(STORIES, "TRAINING.md")
    return files


REPOS = ["test/stories", "test/sharded", "test/sharded2", "test/gated", "test/flaky", "test/corrupt",
         "test/badsum", "test/busy", "test/binonly"]
COMMITS = {r: hashlib.sha1(r.encode()).hexdigest() for r in REPOS}
REVISIONS = {"main", "v1"}
lock = threading.Lock()
counters = {}


def bump(key):
    with lock:
        counters[key] = counters.get(key, 0) + 1
        return counters[key]


def content(path):
    with open(path, "rb") as f:
        return f.read()


class Hub(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def log(self):
        with lock, open(LOG_FILE, "a") as f:
            f.write("%s %s %s\n" % (self.command, self.path, self.headers.get("Range", "-")))

    def reply(self, code, body=b"", headers=None, head=False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def do_HEAD(self):
        self.handle_any(head=True)

    def do_GET(self):
        self.handle_any(head=False)

    def authorized(self, repo):
        return repo != "test/gated" or self.headers.get("Authorization") == "Bearer secret"

    def handle_any(self, head):
        self.log()
        parts = self.path.split("?")[0].split("/")
        try:
            if parts[1:3] == ["api", "models"]:
                repo, rev = "/".join(parts[3:5]), parts[6]
                return self.api(repo, rev, head)
            if parts[1] == "lfs":
                return self.lfs("/".join(parts[2:4]), parts[4], head)
            repo = "/".join(parts[1:3])
            if parts[3] == "resolve":
                return self.resolve(repo, parts[4], "/".join(parts[5:]), head)
        except IndexError:
            pass
        self.reply(404, b"not found")

    def api(self, repo, rev, head):
        if repo not in COMMITS:
            return self.reply(404, b'{"error": "Repository not found"}')
        if not self.authorized(repo):
            return self.reply(401, b'{"error": "Access to this model is restricted"}')
        if repo == "test/busy" and bump("busy") <= 2:
            return self.reply(503, b"busy")
        if rev not in REVISIONS and rev != COMMITS[repo]:
            return self.reply(404, b'{"error": "Invalid rev id"}')
        body = json.dumps({"id": repo, "sha": COMMITS[repo],
                           "siblings": [{"rfilename": f} for f in repo_files(repo)]}).encode()
        self.reply(200, body, {"Content-Type": "application/json"}, head)

    def resolve(self, repo, rev, file, head):
        if repo not in COMMITS:
            return self.reply(404, b"Repository not found")
        if not self.authorized(repo):
            return self.reply(401, b"Access restricted")
        if rev not in REVISIONS and rev != COMMITS[repo]:
            return self.reply(404, b"Revision not found")
        files = repo_files(repo)
        if file not in files:
            return self.reply(404, b"Entry not found")
        data = content(files[file])
        hdr = {"X-Repo-Commit": COMMITS[repo]}
        if file.endswith(".safetensors"):
            sha = hashlib.sha256(data).hexdigest()
            hdr.update({"X-Linked-Etag": '"%s"' % sha, "X-Linked-Size": str(len(data)),
                        "ETag": '"%s"' % hashlib.sha1(file.encode()).hexdigest(),
                        "Location": "/lfs/%s/%s" % (repo, sha)})
            return self.reply(302, b"", hdr, head)
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        hdr["ETag"] = '"%s"' % blob
        self.reply(200, data, hdr, head)

    def lfs(self, repo, sha, head):
        path = None
        for f, p in repo_files(repo).items():
            if f.endswith(".safetensors") and hashlib.sha256(content(p)).hexdigest() == sha:
                path = p
        if path is None:
            return self.reply(404, b"no such object")
        data = content(path)
        n = bump("lfs " + repo + sha)
        if repo == "test/badsum" or (repo == "test/corrupt" and n == 1):
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("ETag", '"%s"' % sha)
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, len(data) - 1, len(data)))
        self.end_headers()
        if head:
            return
        if repo == "test/flaky" and n == 1 and len(body) > 1000:
            self.wfile.write(body[: len(body) // 2])  # cut off halfway
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
