"""Every vector in crypto-vectors.json, accepted or rejected as it says, plus our own."""
import json
from pathlib import Path

import pytest

from bridge.sources import wechat_crypto as crypto

VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "corpus" / "wechat" / "crypto-vectors.json"


def load(group):
    if not VECTORS.is_file():
        return [pytest.param(None, id=f"{group}-corpus-missing")]
    return [pytest.param(v, id=v["id"]) for v in json.loads(VECTORS.read_text("utf-8"))[group]]


@pytest.fixture
def vector(request, corpus):
    assert request.param is not None
    return request.param


@pytest.mark.parametrize("vector", load("signature_vectors"), indirect=True)
def test_signature_vectors(vector):
    assert crypto.signature(vector["token"], vector["timestamp"], vector["nonce"]) == vector["signature"]
    assert crypto.signature_ok(vector["signature"], vector["token"], vector["timestamp"], vector["nonce"])
    assert not crypto.signature_ok(vector["signature"], vector["token"], vector["timestamp"],
                                   vector["nonce"] + "1")


@pytest.mark.parametrize("vector", load("aes_vectors") + load("derived_vectors"), indirect=True)
def test_aes_vectors_decrypt_and_reencrypt_exactly(vector):
    key = crypto.decode_key(vector["encoding_aes_key"])
    plaintext = vector["plaintext"].encode("utf-8")
    assert crypto.decrypt(vector["encrypt"], key, vector["receive_id"]) == plaintext
    assert len(plaintext) == int(vector["msg_len"])
    again = crypto.encrypt(plaintext, key, vector["receive_id"], bytes.fromhex(vector["random_hex"]))
    assert again == vector["encrypt"]
    if "msg_signature" in vector:
        assert crypto.signature_ok(vector["msg_signature"], vector["token"], vector["timestamp"],
                                   vector["nonce"], vector["encrypt"])


@pytest.mark.parametrize("vector", load("negative_vectors"), indirect=True)
def test_negative_vectors_are_rejected(vector):
    assert vector["expect"] == "reject"
    if vector["kind"] == "signature":
        assert not crypto.signature_ok(vector["signature"], vector["token"], vector["timestamp"],
                                       vector["nonce"], vector["encrypt"])
        return
    key = crypto.decode_key(vector["encoding_aes_key"])
    with pytest.raises(crypto.CryptoError):
        crypto.decrypt(vector["encrypt"], key, vector["receive_id"])


def test_padding_is_to_32_byte_blocks():
    key = crypto.decode_key("A" * 43)
    for size in (0, 1, 11, 12, 43, 100):
        sealed = crypto.encrypt(b"x" * size, key, "wxapp")
        assert crypto.decrypt(sealed, key, "wxapp") == b"x" * size
        # random 16 + length 4 + message + appid (5), padded with 1..32 bytes
        assert (len(crypto.base64.b64decode(sealed)) - (16 + 4 + size + 5)) in range(1, 33)


@pytest.mark.parametrize("bad", ["", "A" * 42, "A" * 44, "!" * 43])
def test_encoding_aes_key_shape(bad):
    with pytest.raises(ValueError):
        crypto.decode_key(bad)


def test_a_length_field_beyond_the_envelope_is_rejected():
    key = crypto.decode_key("A" * 43)
    # a plaintext whose length field claims more bytes than follow it
    plain = b"r" * 16 + (10_000).to_bytes(4, "big") + b"hi" + b"wxapp"
    encryptor = crypto._cipher(key).encryptor()
    lying = crypto.base64.b64encode(encryptor.update(crypto._pad(plain)) + encryptor.finalize()).decode()
    with pytest.raises(crypto.CryptoError, match="length"):
        crypto.decrypt(lying, key, "wxapp")
