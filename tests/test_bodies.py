"""bridge/bodies.py: streaming HMAC checks, spooling, the per-process memory budget."""
import base64
import hashlib
import hmac
import io

import pytest

from bridge.bodies import SPOOL_ABOVE, HmacCheck, MemoryBudget, hmac_check, received
from bridge.events import Rejected


def mac(secret, body, algorithm="sha256"):
    return hmac.new(secret.encode(), body, algorithm).digest()


class Reads(io.BytesIO):
    """A stream that records how much it was asked for at once."""

    def __init__(self, data):
        super().__init__(data)
        self.largest = 0

    def read(self, n=-1):
        self.largest = max(self.largest, n)
        return super().read(n)


@pytest.mark.parametrize("algorithm,prefix,encoding", [("sha256", "sha256=", "hex"), ("sha1", "sha1=", "hex"),
                                                       ("sha256", "", "base64"), ("sha512", "v1,", "base64")])
def test_a_signature_computed_chunk_by_chunk_matches_the_whole_body(algorithm, prefix, encoding):
    body = b"x" * 300_000 + b"tail"
    digest = mac("s3cret", b"ts:" + body, algorithm)
    given = prefix + (digest.hex() if encoding == "hex" else base64.b64encode(digest).decode())
    check = HmacCheck("s3cret", given, algorithm, prefix, encoding, before=b"ts:")
    for i in range(0, len(body), 65536):
        check.update(body[i:i + 65536])
    check.finish()
    wrong = HmacCheck("s3cret", given, algorithm, prefix, encoding)  # without the signed timestamp
    wrong.update(body)
    with pytest.raises(Rejected) as exc:
        wrong.finish()
    assert exc.value.status == 401


def test_a_missing_signature_is_401_before_any_body():
    with pytest.raises(Rejected) as exc:
        hmac_check({"Content-Type": "application/json"}, "X-Acme-Signature", "s", "ACME_SECRET")
    assert (exc.value.status, exc.value.reason) == (401, "missing X-Acme-Signature (ACME_SECRET is set)")


def test_a_wrong_signature_on_a_big_body_is_refused_without_reading_it_into_memory():
    body = b"y" * (4 * SPOOL_ABOVE)
    budget = MemoryBudget(2 * SPOOL_ABOVE)
    check = hmac_check({"X-Sig": "sha256=" + "0" * 64}, "X-Sig", "s", "S", prefix="sha256=")
    stream = Reads(body)
    with pytest.raises(Rejected) as exc:
        with received(stream, len(body), 10 * SPOOL_ABOVE, check, budget):
            pass
    assert exc.value.status == 401
    assert stream.largest <= 64 * 1024 and budget.held == 0


def test_a_verified_big_body_comes_back_whole_and_its_memory_is_given_back():
    body = bytes(range(256)) * (8 * 1024)              # 2 MB: spooled to disk, then read back
    budget = MemoryBudget(4 * SPOOL_ABOVE)
    check = hmac_check({"X-Sig": mac("s", body).hex()}, "X-Sig", "s", "S")
    with received(io.BytesIO(body), None, 10 * SPOOL_ABOVE, check, budget) as got:
        assert got == body and budget.held == len(body)
    assert budget.held == 0


def test_too_big_is_413_by_length_or_as_it_arrives():
    budget = MemoryBudget(SPOOL_ABOVE)
    for length in (2000, None):                      # announced, or found out while reading
        with pytest.raises(Rejected) as exc:
            with received(io.BytesIO(b"z" * 2000), length, 1000, None, budget):
                pass
        assert exc.value.status == 413
    assert budget.held == 0


def test_past_the_memory_cap_a_body_is_429_and_the_bodies_in_hand_stay():
    budget = MemoryBudget(1024 * 1024)
    with received(io.BytesIO(b"a" * 700_000), 700_000, SPOOL_ABOVE, None, budget) as first:
        with pytest.raises(Rejected) as exc:
            with received(io.BytesIO(b"b" * 700_000), 700_000, SPOOL_ABOVE, None, budget):
                pass
        assert exc.value.status == 429 and len(first) == 700_000
    assert budget.held == 0
    with received(io.BytesIO(b"c" * 700_000), 700_000, SPOOL_ABOVE, None, budget) as again:
        assert again == b"c" * 700_000



def test_a_body_larger_than_the_memory_cap_itself_is_413_naming_the_setting():
    budget = MemoryBudget(SPOOL_ABOVE)                # a retry could never fit: not "429, retry"
    body = b"d" * (3 * SPOOL_ABOVE)
    with pytest.raises(Rejected) as exc:
        with received(io.BytesIO(body), len(body), 10 * SPOOL_ABOVE, None, budget):
            pass
    assert exc.value.status == 413 and "INTAKE_MAX_BODY_MEMORY" in exc.value.reason
    assert budget.held == 0

def test_github_streams_its_check_and_keeps_the_whole_body_verify():
    from bridge.sources import github
    config = github.Config(secret="topsecret")
    body = b'{"zen": "hi"}'
    headers = {"X-Hub-Signature-256": github.sign("topsecret", body)}
    github.verify(headers, body, config)
    check = github.body_check(headers, config)
    check.update(body[:5])
    check.update(body[5:])
    check.finish()
    old = {"X-Hub-Signature": github.sign("topsecret", body, "sha1")}
    github.verify(old, body, config)
    assert github.body_check({}, github.Config(secret="")) is None
    with pytest.raises(Rejected):
        github.verify({"X-Hub-Signature-256": hashlib.sha256(body).hexdigest()}, body, config)
