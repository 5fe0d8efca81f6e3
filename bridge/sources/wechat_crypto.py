"""WeChat's signatures and its AES "safe mode" envelope, on the `cryptography` package.

Envelope: AES-256-CBC, key = base64(EncodingAESKey + "="), IV = key[:16], plaintext
`random(16) ‖ len(msg) (4 bytes, big-endian) ‖ msg ‖ AppID`, PKCS#7 padding to **32-byte**
blocks (a 16-byte unpadder rejects WeChat's own example, which pads with 19 bytes).
CBC is not authenticated: callers check `msg_signature` before decrypting.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 32          # WeChat's PKCS#7 block size (K = 32), not AES's 16
RANDOM_BYTES = 16


class CryptoError(ValueError):
    """An envelope that does not open with our key and AppID."""


def signature(*parts: str) -> str:
    """sha1 hex of the parts sorted as strings and concatenated (token, timestamp, nonce[, Encrypt])."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def signature_ok(given: str, *parts: str) -> bool:
    return hmac.compare_digest(given.strip().lower().encode("ascii", "replace"),
                               signature(*parts).encode("ascii"))


def decode_key(encoding_aes_key: str) -> bytes:
    """The 43-character EncodingAESKey → its 32-byte AES key (ValueError when it is not one)."""
    if len(encoding_aes_key) != 43:
        raise ValueError("an EncodingAESKey has 43 characters")
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except binascii.Error:
        raise ValueError("an EncodingAESKey is base64 (letters, digits, + and /)") from None
    if len(key) != 32:
        raise ValueError("an EncodingAESKey decodes to 32 bytes")
    return key


def _cipher(key: bytes) -> Cipher:
    return Cipher(algorithms.AES(key), modes.CBC(key[:16]))


def _pad(data: bytes) -> bytes:
    n = BLOCK - len(data) % BLOCK
    return data + bytes([n]) * n


def _unpad(data: bytes) -> bytes:
    n = data[-1] if data else 0
    if not 1 <= n <= BLOCK or n > len(data) or data[-n:] != bytes([n]) * n:
        raise CryptoError("bad padding (wrong EncodingAESKey?)")
    return data[:-n]


def encrypt(msg: bytes, key: bytes, app_id: str, random16: bytes | None = None) -> str:
    """Seal `msg` for `app_id`; `random16` is fixed only in known-answer tests."""
    prefix = random16 if random16 is not None else os.urandom(RANDOM_BYTES)
    plain = prefix + struct.pack(">I", len(msg)) + msg + app_id.encode("utf-8")
    encryptor = _cipher(key).encryptor()
    return base64.b64encode(encryptor.update(_pad(plain)) + encryptor.finalize()).decode("ascii")


def decrypt(encrypt_b64: str, key: bytes, app_id: str) -> bytes:
    """Open an envelope; the message bytes, or CryptoError naming what is wrong."""
    try:
        sealed = base64.b64decode(encrypt_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError("Encrypt is not base64") from None
    if not sealed or len(sealed) % 16:
        raise CryptoError("ciphertext length is not a multiple of the AES block")
    decryptor = _cipher(key).decryptor()
    plain = _unpad(decryptor.update(sealed) + decryptor.finalize())
    if len(plain) < RANDOM_BYTES + 4:
        raise CryptoError("envelope too short")
    (length,) = struct.unpack(">I", plain[RANDOM_BYTES:RANDOM_BYTES + 4])
    body = plain[RANDOM_BYTES + 4:]
    if length > len(body):
        raise CryptoError("message length field is larger than the envelope")
    msg, receive_id = body[:length], body[length:]
    if not hmac.compare_digest(receive_id, app_id.encode("utf-8")):
        raise CryptoError("the envelope is for another AppID (check WECHAT_APPID)")
    return msg
