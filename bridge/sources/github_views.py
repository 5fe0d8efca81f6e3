"""GitHub payload → what one mail needs: a template family, its context and its thread.

A small router keyed by (event, action) in the gidgethub style picks a view function; an
(event, action) pair nobody registered falls back to the event's view, and an event nobody
registered (GitHub adds some every year) to `generic_view`. Views only pick and normalise
payload fields: every word a reader sees lives in bridge/templates/github/.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from markdown_it import MarkdownIt
from markupsafe import Markup

# Objects that describe where an event happened rather than what happened.
WHERE_KEYS = ("repository", "sender", "organization", "installation", "enterprise", "changes")
# Keys worth showing in the generic mail: noise such as ids and API URLs is left out.
HIDDEN_FIELDS = ("id", "url", "action", "body", "description")
HIDDEN_FIELD_SUFFIXES = ("_url", "node_id", "_id", "_sha")
MAX_GENERIC_FIELDS = 12
FIELD_CHARS = 200
FAILED_CONCLUSIONS = ("failure", "timed_out", "startup_failure", "action_required", "error")

_markdown = MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


@dataclass(frozen=True)
class View:
    template: str
    context: dict[str, Any]
    thread_key: str | None = None
    thread_root: bool = False
    outcome: str = ""          # a CI conclusion, for GITHUB_EVENTS globs like *.completed.success


@dataclass(frozen=True)
class Payload:
    """One decoded delivery, with safe accessors: a payload of the wrong shape reads as empty."""

    event: str
    action: str
    doc: dict
    limits: "Limits"

    def get(self, *path) -> Any:
        return dig(self.doc, *path)

    def text(self, *path) -> str:
        return scalar(self.get(*path))

    @property
    def repo(self) -> str:
        return self.text("repository", "full_name")

    @property
    def scope(self) -> str:
        """What the subject's [tag] names: the repository, else the organization or account."""
        return (self.repo or self.text("organization", "login")
                or self.text("installation", "account", "login") or self.text("enterprise", "slug"))


@dataclass(frozen=True)
class Limits:
    max_commits: int
    max_body_chars: int


def dig(value: Any, *path) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key)
        elif isinstance(value, list) and isinstance(key, int) and -len(value) <= key < len(value):
            value = value[key]
        else:
            return None
    return value


def scalar(value: Any) -> str:
    """A payload value as text; objects, lists and nulls read as ''."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (str, int, float)):
        return str(value)
    return ""


def at(value: Any, *path) -> str:
    """The text at `path` inside `value` ('' when the path or the value is not there)."""
    return scalar(dig(value, *path))


def first_line(message: str) -> str:
    return message.strip().splitlines()[0] if message.strip() else ""


def short_sha(sha: str) -> str:
    return sha[:7]


def markdown(source: Any, url: str, limit: int) -> dict[str, Any]:
    """A Markdown body as plain text and safe HTML (raw HTML off), cut at `limit` characters."""
    text = scalar(source).replace("\r\n", "\n").replace("\r", "\n").strip()
    cut = len(text) > limit
    if cut:
        head = text[:limit]
        text = head[:head.rfind("\n")] if "\n" in head[limit // 2:] else head
    return {"body": text, "body_html": Markup(_markdown.render(text)) if text else "",
            "body_cut": cut, "body_url": url}


class Router:
    """(event, action) → view function, in the spirit of gidgethub.routing.Router."""

    def __init__(self, fallback: Callable[[Payload], View]):
        self.routes: dict[tuple[str, str | None], Callable[[Payload], View]] = {}
        self.fallback = fallback

    def register(self, *events: str, action: str | None = None):
        def add(view: Callable[[Payload], View]):
            for event in events:
                self.routes[(event, action)] = view
            return view
        return add

    def fetch(self, event: str, action: str) -> Callable[[Payload], View]:
        return (self.routes.get((event, action)) or self.routes.get((event, None))
                or self.fallback)

    def view(self, payload: Payload) -> View:
        return self.fetch(payload.event, payload.action)(payload)


# --------------------------------------------------------------------------- shared parts

def item_thread(p: Payload) -> dict[str, Any]:
    """The issue, pull request or discussion a payload is about: its number, title and kind."""
    for kind in ("pull_request", "issue", "discussion"):
        number = p.text(kind, "number")
        if number:
            is_pr = kind == "pull_request" or p.get("issue", "pull_request") is not None
            return {"number": number, "title": p.text(kind, "title"), "item_url": p.text(kind, "html_url"),
                    "item_kind": "pull_request" if is_pr else kind,
                    "thread": f"{p.repo}#{'discussion' if kind == 'discussion' else 'issue'}/{number}"}
    return {}


def common(p: Payload) -> dict[str, Any]:
    return {"event_name": p.event, "action": p.action, "scope": p.scope, "repo": p.repo,
            "repo_url": p.text("repository", "html_url"), "sender": p.text("sender", "login"),
            "sender_url": p.text("sender", "html_url")}


def texts(items: Any, key: str) -> list[str]:
    """The `key` of each object in a list: labels' names, assignees' logins, ..."""
    return [at(i, key) for i in items if at(i, key)] if isinstance(items, list) else []


def threaded(p: Payload, template: str, context: dict, root_action: str) -> View:
    """A view inside an issue/PR/discussion thread; `root_action` is the one that opens it."""
    item = item_thread(p)
    root = bool(item) and p.action == root_action
    ctx = {**common(p), **item, **context, "reply": bool(item) and not root}
    return View(template, ctx, thread_key=item.get("thread"), thread_root=root)


# --------------------------------------------------------------------------- views

def generic_view(p: Payload) -> View:
    """Any event or action without a view of its own: the main object's key fields."""
    main_key, main = main_object(p)
    url = (at(main, "html_url") or p.text("compare") or p.text("repository", "html_url")
           or p.text("sender", "html_url"))
    fields = [(k, v) for k, v in scalar_fields(p.doc) + scalar_fields(main)][:MAX_GENERIC_FIELDS]
    body_source = dig(main, "body") or dig(main, "description")
    context = {"url": url, "object": main_key, "name": object_name(main), "fields": fields,
               **markdown(body_source, url, p.limits.max_body_chars)}
    return threaded(p, "github/default", context, root_action="")


def main_object(p: Payload) -> tuple[str, Any]:
    named = p.get(p.event)
    if isinstance(named, dict):
        return p.event, named
    for key, value in p.doc.items():
        if key not in WHERE_KEYS and isinstance(value, dict):
            return key, value
    return "", {}


def object_name(obj: Any) -> str:
    for key in ("title", "name", "tag_name", "login", "full_name", "key", "ref"):
        name = at(obj, key)
        if name:
            return name
    return ""


def scalar_fields(obj: Any) -> list[tuple[str, str]]:
    if not isinstance(obj, dict):
        return []
    out = []
    for key, value in obj.items():
        text = scalar(value)
        if not text or key in HIDDEN_FIELDS or key.endswith(HIDDEN_FIELD_SUFFIXES):
            continue
        out.append((key, text if len(text) <= FIELD_CHARS else text[:FIELD_CHARS] + "…"))
    return out


router = Router(fallback=generic_view)


@router.register("push")
def push_view(p: Payload) -> View:
    ref = p.text("ref")
    commits = [c for c in p.get("commits") or [] if isinstance(c, dict)] \
        if isinstance(p.get("commits"), list) else []
    if not commits and isinstance(p.get("head_commit"), dict) and not p.get("deleted"):
        commits = [p.get("head_commit")]
    shown = commits[-p.limits.max_commits:] if p.limits.max_commits else []
    context = {**common(p), **ref_names(ref), "created": bool(p.get("created")),
               "deleted": bool(p.get("deleted")), "forced": bool(p.get("forced")),
               "before": short_sha(p.text("before")), "after": short_sha(p.text("after")),
               "url": p.text("compare") or p.text("repository", "html_url"),
               "pusher": p.text("pusher", "name") or p.text("sender", "login"),
               "commit_count": len(commits), "more": len(commits) - len(shown),
               "commits": [commit_line(c) for c in shown], "files": file_summary(commits)}
    return View("github/push", context, thread_key=f"{p.repo}:{ref}")


def ref_names(ref: str) -> dict[str, str]:
    for prefix, ref_type in (("refs/heads/", "branch"), ("refs/tags/", "tag")):
        if ref.startswith(prefix):
            return {"ref": ref, "ref_type": ref_type, "ref_name": ref[len(prefix):]}
    return {"ref": ref, "ref_type": "ref", "ref_name": ref}


def commit_line(commit: dict) -> dict[str, str]:
    return {"sha": short_sha(scalar(commit.get("id"))), "title": first_line(scalar(commit.get("message"))),
            "author": at(commit, "author", "name") or at(commit, "author", "username"),
            "url": scalar(commit.get("url"))}


def file_summary(commits: list[dict]) -> dict[str, int]:
    paths: dict[str, set[str]] = {"added": set(), "modified": set(), "removed": set()}
    for commit in commits:
        for change, seen in paths.items():
            files = commit.get(change)
            if isinstance(files, list):
                seen.update(scalar(f) for f in files if scalar(f))
    return {change: len(seen) for change, seen in paths.items()}


@router.register("create", "delete")
def ref_view(p: Payload) -> View:
    ref_type, name = p.text("ref_type"), p.text("ref")
    full_ref = {"branch": "refs/heads/", "tag": "refs/tags/"}.get(ref_type, "") + name
    context = {**common(p), "ref": full_ref, "ref_type": ref_type or "ref", "ref_name": name,
               "url": p.text("repository", "html_url"), "deleted": p.event == "delete"}
    return View("github/ref", context, thread_key=f"{p.repo}:{full_ref}")


@router.register("issues", "pull_request", "discussion")
def item_view(p: Payload, verb: str = "") -> View:
    verb = verb or p.action
    kind = item_thread(p).get("item_kind", p.event)
    obj = p.get("issue" if p.event == "issues" else p.event)
    shows_body = p.action in ("opened", "created", "edited", "reopened", "transferred")
    url = at(obj, "html_url")
    context = {
        "verb": verb, "kind": kind, "url": url,
        "author": at(obj, "user", "login"), "state": at(obj, "state"),
        "draft": dig(obj, "draft") is True, "labels": texts(dig(obj, "labels"), "name"),
        "assignees": texts(dig(obj, "assignees"), "login"), "milestone": at(obj, "milestone", "title"),
        "label": p.text("label", "name"), "assignee": p.text("assignee", "login"),
        "reviewer": p.text("requested_reviewer", "login") or p.text("requested_team", "name"),
        "base": at(obj, "base", "ref"), "head": at(obj, "head", "label"),
        "commits": at(obj, "commits"), "additions": at(obj, "additions"),
        "deletions": at(obj, "deletions"), "changed_files": at(obj, "changed_files"),
        "merge_sha": short_sha(at(obj, "merge_commit_sha")) if verb == "merged" else "",
        "old_title": p.text("changes", "title", "from"), "category": at(obj, "category", "name"),
        "answer_url": p.text("answer", "html_url"),
        **(markdown(dig(obj, "body"), url, p.limits.max_body_chars) if shows_body else {}),
    }
    root_action = "created" if p.event == "discussion" else "opened"
    return threaded(p, "github/item", context, root_action)


@router.register("pull_request", action="closed")
def closed_pull_request_view(p: Payload) -> View:
    """`closed` is two things to a reader: merged, or closed without merging."""
    return item_view(p, verb="merged" if p.get("pull_request", "merged") is True else "closed")


@router.register("issue_comment", "discussion_comment", "pull_request_review_comment",
                 "pull_request_review")
def comment_view(p: Payload) -> View:
    note = p.get("review") if p.event == "pull_request_review" else p.get("comment")
    url = at(note, "html_url")
    context = {"url": url, "author": at(note, "user", "login"),
               "review_state": at(note, "state") if p.event == "pull_request_review" else "",
               "path": at(note, "path"), "line": at(note, "line"),
               "hunk": at(note, "diff_hunk"), "old_body": p.text("changes", "body", "from"),
               **markdown(dig(note, "body"), url, p.limits.max_body_chars)}
    return threaded(p, "github/comment", context, root_action="")


@router.register("release")
def release_view(p: Payload) -> View:
    # `published` opens the thread: `created` is a draft or comes with it, and is off by default.
    release = p.get("release")
    url = at(release, "html_url")
    assets = dig(release, "assets")
    context = {**common(p), "url": url, "tag": at(release, "tag_name"),
               "name": at(release, "name"), "target": at(release, "target_commitish"),
               "author": at(release, "author", "login"),
               "prerelease": dig(release, "prerelease") is True, "draft": dig(release, "draft") is True,
               "assets": [{"name": at(a, "name"), "url": at(a, "browser_download_url")}
                          for a in assets if isinstance(a, dict)] if isinstance(assets, list) else [],
               "reply": p.action != "published",
               **markdown(dig(release, "body"), url, p.limits.max_body_chars)}
    return View("github/release", context, thread_key=f"{p.repo}:release/{p.text('release', 'id')}",
                thread_root=p.action == "published")


@router.register("workflow_run", "workflow_job", "check_run", "check_suite")
def run_view(p: Payload) -> View:
    run = p.get(p.event)
    conclusion = at(run, "conclusion")
    name = (at(run, "name") or p.text("workflow", "name") or at(run, "workflow_name")
            or at(run, "app", "name"))
    context = {
        **common(p), "kind": p.event, "name": name, "conclusion": conclusion,
        "status": at(run, "status"), "failed": conclusion in FAILED_CONCLUSIONS,
        "branch": at(run, "head_branch") or at(run, "check_suite", "head_branch"),
        "sha": short_sha(at(run, "head_sha")), "title": at(run, "display_title"),
        "run_number": at(run, "run_number"), "workflow": at(run, "workflow_name"),
        "trigger": at(run, "event"), "actor": at(run, "actor", "login"),
        "commit_title": first_line(at(run, "head_commit", "message")),
        "summary": at(run, "output", "title"),
        "pull_requests": texts(dig(run, "pull_requests"), "number"),
        "url": at(run, "html_url") or at(run, "details_url")
        or p.text("repository", "html_url"),
    }
    key = at(run, "workflow_id") or name
    return View("github/run", context, thread_key=f"{p.repo}:run/{key}/{context['branch']}",
                outcome=conclusion)


@router.register("deployment_status")
def deployment_view(p: Payload) -> View:
    state = p.text("deployment_status", "state")
    context = {
        **common(p), "kind": p.event, "name": p.text("deployment", "environment")
        or p.text("deployment_status", "environment"), "conclusion": state, "status": state,
        "failed": state in FAILED_CONCLUSIONS, "branch": p.text("deployment", "ref"),
        "sha": short_sha(p.text("deployment", "sha")), "summary": p.text("deployment_status", "description"),
        "actor": p.text("deployment_status", "creator", "login"),
        "url": p.text("deployment_status", "target_url") or p.text("deployment_status", "log_url")
        or p.text("workflow_run", "html_url") or p.text("repository", "html_url"),
    }
    return View("github/run", context, thread_key=f"{p.repo}:deployment/{p.text('deployment', 'id')}",
                outcome=state)


@router.register("status")
def status_view(p: Payload) -> View:
    state = p.text("state")
    branches = texts(p.get("branches"), "name")
    context = {**common(p), "kind": p.event, "name": p.text("context"), "conclusion": state,
               "status": state, "failed": state in FAILED_CONCLUSIONS,
               "branch": branches[0] if len(branches) == 1 else "", "sha": short_sha(p.text("sha")),
               "summary": p.text("description"),
               "commit_title": first_line(p.text("commit", "commit", "message")),
               "url": p.text("target_url") or p.text("commit", "html_url")}
    return View("github/run", context, thread_key=f"{p.repo}:status/{p.text('context')}",
                outcome=state)


@router.register("dependabot_alert", "code_scanning_alert", "secret_scanning_alert",
                 "repository_vulnerability_alert", "security_advisory")
def alert_view(p: Payload) -> View:
    alert = p.get("alert") if isinstance(p.get("alert"), dict) else p.get("security_advisory")
    advisory = dig(alert, "security_advisory") or p.get("security_advisory")
    number = at(alert, "number") or at(alert, "ghsa_id")
    url = at(alert, "html_url") or p.text("repository", "html_url")
    context = {
        **common(p), "kind": p.event, "number": number, "url": url, "state": at(alert, "state"),
        "summary": (at(advisory, "summary") or at(alert, "rule", "description")
                    or at(alert, "secret_type_display_name")
                    or at(alert, "affected_package_name")),
        "severity": (at(alert, "security_vulnerability", "severity") or at(advisory, "severity")
                     or at(alert, "rule", "security_severity_level")
                     or at(alert, "rule", "severity") or at(alert, "severity")),
        "package": (at(alert, "dependency", "package", "name") or at(alert, "affected_package_name")),
        "manifest": at(alert, "dependency", "manifest_path"),
        "location": at(alert, "most_recent_instance", "location", "path"),
        "tool": at(alert, "tool", "name"), "identifier": (
            at(advisory, "cve_id") or at(advisory, "ghsa_id")
            or at(alert, "external_identifier")),
        "fixed_in": at(alert, "security_vulnerability", "first_patched_version", "identifier")
        or at(alert, "fixed_in"),
        "reply": p.action not in ("created", "create", "published"),
        **markdown(dig(advisory, "description"), url, p.limits.max_body_chars),
    }
    return View("github/alert", context, thread_key=f"{p.scope}:{p.event}/{number}",
                thread_root=not context["reply"])


@router.register("star", "watch", "fork")
def star_view(p: Payload) -> View:
    context = {**common(p), "forkee": p.text("forkee", "full_name"),
               "url": p.text("forkee", "html_url") or p.text("repository", "html_url"),
               "stars": p.text("repository", "stargazers_count")}
    return View("github/star", context)
