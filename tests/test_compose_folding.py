"""Header folding: a subject reads back exactly as it was composed, whatever its length."""
import email
import email.policy
import time
import types

import pytest

from bridge.mail.compose import compose


def row(subject):
    return types.SimpleNamespace(subject=subject, mail_from="b@example.com", mail_to="a@example.com",
                                 created_at=time.time(), message_id="<x@example.com>", in_reply_to=None,
                                 headers="{}", text="t", html=None)


@pytest.mark.parametrize("subject", [
    "[FIRING:1] InstanceDown (prod node-00.prod.internal:9100 node critical sre)",  # 75: the old trap
    "[owner/repo] Issue #12: a title that is just long enough to be folded",
    "[FIRING:1] InstanceDown (prod node-00.prod.internal:9100 node critical sre) and more words",
    "[FIRING:3] 磁盘空间不足 (prod node critical sre 上海-浦东)",
    "[FIRING:1] " + "磁盘空间不足 " * 40 + "end",
    "short",
])
def test_subject_round_trips_without_a_leading_space(subject):
    raw = compose(row(subject)).as_bytes()
    assert email.message_from_bytes(raw, policy=email.policy.default)["Subject"] == subject
    assert all(len(line) <= 998 for line in raw.splitlines())
