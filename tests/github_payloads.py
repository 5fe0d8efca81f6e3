"""Synthetic GitHub deliveries for what the shared corpus lacks: many commits, a merged pull
request, a failed workflow run, hostile titles. Shapes follow GitHub's documented payloads."""
from __future__ import annotations

import copy
import hashlib
import hmac
import json
import urllib.parse
import uuid

SECRET = "test-secret"
REPO = {"id": 1, "name": "widgets", "full_name": "acme/widgets", "html_url": "https://github.com/acme/widgets",
        "owner": {"login": "acme"}, "stargazers_count": 3}
SENDER = {"login": "alice", "html_url": "https://github.com/alice"}


def sign(body: bytes, secret: str = SECRET, algorithm: str = "sha256") -> str:
    return f"{algorithm}=" + hmac.new(secret.encode(), body, getattr(hashlib, algorithm)).hexdigest()


def headers_for(event: str, body: bytes, *, secret: str | None = SECRET, delivery: str | None = None,
                hook_id: str = "42", content_type: str = "application/json") -> dict[str, str]:
    headers = {"Content-Type": content_type, "X-GitHub-Event": event, "X-GitHub-Hook-ID": hook_id,
               "X-GitHub-Delivery": delivery or str(uuid.uuid4()), "User-Agent": "GitHub-Hookshot/test"}
    if secret:
        headers["X-Hub-Signature-256"] = sign(body, secret)
    return headers


def post(client, event: str, doc, route: str = "", **kwargs):
    """POST a delivery the way GitHub does: compact JSON, signed over the exact bytes."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc, separators=(",", ":")).encode()
    return client.post(f"/hooks/github{route}", data=body, headers=headers_for(event, body, **kwargs))


def form_body(doc) -> bytes:
    return ("payload=" + urllib.parse.quote_plus(json.dumps(doc, separators=(",", ":")))).encode("ascii")


def commit(n: int, message: str = "") -> dict:
    sha = hashlib.sha1(str(n).encode()).hexdigest()
    return {"id": sha, "message": message or f"Change number {n}\n\nLonger description {n}.",
            "url": f"https://github.com/acme/widgets/commit/{sha}", "distinct": True,
            "author": {"name": f"Dev {n}", "email": f"dev{n}@example.com", "username": f"dev{n}"},
            "added": [f"src/new_{n}.py"], "modified": ["README.md"], "removed": []}


def push(commits: int = 1, ref: str = "refs/heads/main", forced: bool = False, created: bool = False) -> dict:
    items = [commit(n) for n in range(1, commits + 1)]
    return {"ref": ref, "before": "a" * 40, "after": items[-1]["id"] if items else "0" * 40,
            "created": created, "deleted": False, "forced": forced,
            "compare": "https://github.com/acme/widgets/compare/aaaaaaa...bbbbbbb",
            "commits": items, "head_commit": items[-1] if items else None,
            "pusher": {"name": "alice", "email": "alice@example.com"}, "repository": REPO, "sender": SENDER}


def issue(action: str = "opened", title: str = "Widgets wobble", number: int = 7, body: str = "They *wobble*.") -> dict:
    return {"action": action, "repository": REPO, "sender": SENDER,
            "issue": {"number": number, "title": title, "body": body, "state": "open",
                      "html_url": f"https://github.com/acme/widgets/issues/{number}",
                      "user": {"login": "alice"}, "labels": [{"name": "bug"}], "assignees": []}}


def issue_comment(number: int = 7, title: str = "Widgets wobble", body: str = "Same here.") -> dict:
    doc = issue("created", title, number)
    doc["comment"] = {"id": 99, "body": body, "user": {"login": "bob"},
                      "html_url": f"https://github.com/acme/widgets/issues/{number}#issuecomment-99"}
    doc["sender"] = {"login": "bob"}
    return doc


def pull_request(action: str = "opened", merged: bool = False, base: str = "main", number: int = 12) -> dict:
    return {"action": action, "number": number, "repository": REPO, "sender": SENDER,
            "pull_request": {"number": number, "title": "Stop the wobble", "body": "Fixes #7.",
                             "state": "closed" if action == "closed" else "open", "merged": merged,
                             "merge_commit_sha": "c0ffee" + "0" * 34 if merged else None,
                             "html_url": f"https://github.com/acme/widgets/pull/{number}",
                             "user": {"login": "alice"}, "draft": False, "labels": [], "assignees": [],
                             "base": {"ref": base}, "head": {"ref": "fix", "label": "alice:fix"},
                             "commits": 2, "additions": 10, "deletions": 3, "changed_files": 2}}


def workflow_run(conclusion: str = "failure", branch: str = "main") -> dict:
    return {"action": "completed", "repository": REPO, "sender": SENDER,
            "workflow": {"id": 5, "name": "CI"},
            "workflow_run": {"id": 1001, "name": "CI", "workflow_id": 5, "run_number": 88, "status": "completed",
                             "conclusion": conclusion, "head_branch": branch, "head_sha": "d" * 40,
                             "event": "push", "display_title": "Stop the wobble", "actor": {"login": "alice"},
                             "head_commit": {"message": "Stop the wobble\n\nDetails."},
                             "html_url": "https://github.com/acme/widgets/actions/runs/1001",
                             "pull_requests": [{"number": 12}]}}


def with_title(doc: dict, title: str) -> dict:
    doc = copy.deepcopy(doc)
    doc["issue"]["title"] = title
    return doc
