"""Synthetic request bodies of realistic size (about 5 KB): a GitHub push with a few commits,
and a generic message of the same size. Built here so the benchmarks need no corpus."""
from __future__ import annotations

import hashlib
import hmac
import json

SECRET = "bench-webhook-secret"


def _sha(n: int) -> str:
    return hashlib.sha1(str(n).encode()).hexdigest()


def _commit(n: int) -> dict:
    author = {"name": "Mona Lisa", "email": "mona@example.com", "username": "mona"}
    return {"id": _sha(n), "tree_id": _sha(n + 100), "distinct": True,
            "message": f"Fix the retry loop in the sender ({n})\n\nThe lease ran out while a slow "
                       "server was answering, so a second worker could claim the row again.",
            "timestamp": "2026-11-27T08:00:00Z", "author": author, "committer": author,
            "url": f"https://github.com/octo/bridge/commit/{_sha(n)}",
            "added": [], "removed": [], "modified": ["bridge/sender.py", "tests/test_sender.py"]}


def github_push(size: int = 5 * 1024) -> bytes:
    commits = [_commit(n) for n in range(3)]
    user = {"login": "mona", "id": 1, "type": "User", "html_url": "https://github.com/mona",
            "avatar_url": "https://avatars.githubusercontent.com/u/1?v=4"}
    doc = {"ref": "refs/heads/main", "before": _sha(98), "after": commits[-1]["id"],
           "created": False, "deleted": False, "forced": False, "base_ref": None,
           "compare": "https://github.com/octo/bridge/compare/aaaaaaa...bbbbbbb",
           "commits": commits, "head_commit": commits[-1],
           "repository": {"id": 42, "name": "bridge", "full_name": "octo/bridge", "private": False,
                          "owner": user, "html_url": "https://github.com/octo/bridge",
                          "default_branch": "main", "description": "Webhooks in, mail out"},
           "pusher": {"name": "mona", "email": "mona@example.com"}, "sender": user,
           "hook_id": 7}
    body = json.dumps(doc).encode()
    doc["repository"]["description"] += " " + "x" * max(0, size - len(body) - 1)
    return json.dumps(doc).encode()


def generic_message(size: int = 5 * 1024) -> bytes:
    line = "- build 1234 on main: tests passed, artefact uploaded\n"
    return json.dumps({"subject": "Nightly build report",
                       "text": (line * (size // len(line)))[: size - 60]}).encode()


def github_signature(body: bytes) -> str:
    return "sha256=" + hmac.new(SECRET.encode(), body, "sha256").hexdigest()


def github_payload_headers() -> tuple[bytes, dict[str, str]]:
    """A signed push delivery (the delivery id header is set per request by the load tool)."""
    body = github_push()
    return body, {"Content-Type": "application/json", "X-GitHub-Event": "push",
                  "X-GitHub-Hook-ID": "7", "X-Hub-Signature-256": github_signature(body),
                  "User-Agent": "GitHub-Hookshot/bench"}
