"""GitHub: a reply becomes a comment on the issue or pull request, a reply to the review
comment it answers, or a discussion comment (GraphQL). The token posts as its owner, so the
comment's first line says who wrote it by mail."""
from __future__ import annotations

from typing import Any, Mapping

from bridge.actions import Context, Done, Later, Refused, call, retry_after

API_VERSION = "2022-11-28"


def _obj(doc: Any, key: str) -> dict[str, Any]:
    value = doc.get(key) if isinstance(doc, dict) else None
    return value if isinstance(value, dict) else {}


def _id(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def target(event: str, doc: Mapping[str, Any]) -> dict[str, Any] | None:
    """What answering a mail about this payload reaches (None: nothing on GitHub). Payloads
    of odd shapes reach nothing rather than fail."""
    repo = _obj(doc, "repository").get("full_name")
    if not isinstance(repo, str) or not repo:
        return None
    comment, pull = _obj(doc, "comment"), _obj(doc, "pull_request")
    if event == "pull_request_review_comment" and _id(comment.get("id")) and _id(pull.get("number")):
        # Replies to replies are not supported: answer the thread's top comment.
        top = _id(comment.get("in_reply_to_id")) or comment["id"]
        return {"target": "github", "op": "review_reply", "repo": repo, "number": pull["number"], "comment_id": top}
    discussion = _obj(doc, "discussion")
    if isinstance(discussion.get("node_id"), str) and _id(discussion.get("number")):
        return {"target": "github", "op": "discussion", "repo": repo, "number": discussion["number"],
                "node_id": discussion["node_id"]}
    for kind in ("issue", "pull_request"):
        number = _id(_obj(doc, kind).get("number"))
        if number:
            return {"target": "github", "op": "comment", "repo": repo, "number": number}
    return None


def plan(text: str, target: Mapping[str, Any], sender: str) -> dict[str, Any]:
    return {**target, "body": f"_Reply by email from {sender}:_\n\n{text}"}


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION}


def _graphql_url(api_url: str) -> str:
    # api.github.com/graphql; GitHub Enterprise: https://host/api/v3 → https://host/api/graphql
    return api_url[:-len("/v3")] + "/graphql" if api_url.endswith("/api/v3") else api_url + "/graphql"


def _refusal(response) -> Refused | Later:
    try:
        message = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        message = response.text.strip()[:200]
    if response.status_code in (403, 429) and (retry_after(response) is not None
                                               or "rate limit" in message.lower()):
        return Later(f"GitHub rate limit: {message}", retry_after(response) or 60.0)
    hints = {401: "GITHUB_TOKEN is wrong or expired",
             403: "the token lacks permission (Issues / Pull requests: write) on this repository",
             404: "the repository or item is not visible to GITHUB_TOKEN (or was deleted)",
             422: "GitHub refused the comment as it is"}
    return Refused(f"GitHub answered {response.status_code}: {message}", hints.get(response.status_code))


def perform(action: Mapping[str, Any], ctx: Context) -> Done | Refused | Later:
    replies = ctx.settings.replies
    if not replies.github_token:
        return Refused("GITHUB_TOKEN is not set: the bridge cannot comment on GitHub")
    base, repo = replies.github_api_url, action["repo"]
    if action["op"] == "discussion":
        return _discussion(action, ctx)
    if action["op"] == "review_reply":
        url = f"{base}/repos/{repo}/pulls/{action['number']}/comments/{action['comment_id']}/replies"
    else:
        url = f"{base}/repos/{repo}/issues/{action['number']}/comments"
    response = call(ctx.http, "POST", url, replies.api_timeout, json={"body": action["body"]},
                    headers=_headers(replies.github_token))
    if isinstance(response, Later):
        return response
    if response.status_code != 201:
        return _refusal(response)
    doc = response.json()
    return Done("github_comment", {"id": doc.get("id"), "html_url": doc.get("html_url"),
                                   "repo": repo, "number": action["number"]})


MUTATION = ("mutation($id: ID!, $body: String!) { addDiscussionComment(input: {discussionId: $id, "
            "body: $body}) { comment { id url } } }")


def _discussion(action: Mapping[str, Any], ctx: Context) -> Done | Refused | Later:
    replies = ctx.settings.replies
    response = call(ctx.http, "POST", _graphql_url(replies.github_api_url), replies.api_timeout,
                    headers=_headers(replies.github_token),
                    json={"query": MUTATION, "variables": {"id": action["node_id"], "body": action["body"]}})
    if isinstance(response, Later):
        return response
    if response.status_code != 200:
        return _refusal(response)
    doc = response.json()
    if doc.get("errors"):
        return Refused("GitHub GraphQL: " + "; ".join(str(e.get("message")) for e in doc["errors"])[:300])
    comment = ((doc.get("data") or {}).get("addDiscussionComment") or {}).get("comment") or {}
    return Done("github_comment", {"id": comment.get("id"), "html_url": comment.get("url"),
                                   "repo": action["repo"], "number": action["number"]})
