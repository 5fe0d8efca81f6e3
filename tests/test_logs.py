"""Grepping a source's delivery id in the log tells that delivery's whole story."""
import logging
import uuid

import pytest

from tests.test_ops import deliver, post


@pytest.fixture
def log_lines():
    lines = []

    class Keep(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("bridge")
    logger.addHandler(handler)
    yield lines
    logger.removeHandler(handler)


def fields(line: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def test_a_delivery_id_finds_request_duplicate_and_sending(app, client, log_lines):
    guid = str(uuid.uuid4())
    row_id = post(client, "the story", key=guid)
    post(client, "the story", key=guid)            # the sender retried the webhook
    post(client, "another story", key=str(uuid.uuid4()))
    deliver(app)
    story = [fields(line) for line in log_lines if guid in line]
    assert [(f["event"], f.get("outcome") or f.get("status")) for f in story] == [
        ("request", "accepted"), ("request", "duplicate"), ("delivery", "sent")]
    assert {f["outbox_id"] for f in story} == {str(row_id)}
    assert story[0]["source"] == "generic" and story[0]["code"] == "202"
    # ...and the outbox id finds the same lines.
    assert len([line for line in log_lines if f"outbox_id={row_id} " in line + " "]) == 3


def test_a_refused_request_still_names_its_delivery(client, log_lines):
    guid = str(uuid.uuid4())
    client.post("/hooks/generic", data=b"{", headers={"Content-Type": "application/json",
                                                     "X-GitHub-Delivery": guid})
    (line,) = [fields(line) for line in log_lines if guid in line]
    assert line["event"] == "request" and line["code"] == "400" and "outbox_id" not in line
