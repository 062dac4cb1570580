"""The value codec's per-value fast paths write what the general path writes, and seal it the same."""

from __future__ import annotations

import enum
import hmac
import pickle
import struct

import cloudpickle
import numpy as np
import pytest
from cryptography.hazmat.primitives.poly1305 import Poly1305

from fanflow.errors import ValueRejectedError
from fanflow.store.codec import NONCE_LEN, PLAIN_TYPES, SEAL_LEN, Codec, encode

SECRET = b"codec-test-secret"
KEY = "ff:run-1:out:7"


class Level(enum.IntEnum):
    LOW = 1


PLAIN = [
    0,
    -1,
    12345,
    2**70,
    -(2**200),
    1.5,
    float("nan"),
    float("-inf"),
    True,
    False,
    None,
    "",
    "déjà vu",
    "x" * 70_000,  # past the pickler's 64 KB frame: written outside the frame, by both picklers alike
    b"",
    b"\x00\xff",
    b"y" * 70_000,
]


def _reference_tag(key: str, stored: bytes) -> bytes:
    """The tag as the codec computed it before its fast paths: hmac.digest for the one-time key,
    Poly1305 fed the flags and the frames one update at a time."""
    values_key = hmac.digest(SECRET, b"fanflow store values v1", "sha256")
    name = key.encode()
    nonce = stored[1 : 1 + NONCE_LEN]
    mac = Poly1305(hmac.digest(values_key, struct.pack("<I", len(name)) + name + nonce, "sha256"))
    mac.update(stored[:1])
    mac.update(stored[1 + SEAL_LEN :])
    return mac.finalize()


@pytest.mark.parametrize("value", PLAIN, ids=lambda v: f"{type(v).__name__}-{len(repr(v))}")
def test_plain_values_pickle_to_the_bytes_cloudpickle_writes(value: object) -> None:
    assert type(value) in PLAIN_TYPES
    frames = encode(value).frames
    assert frames[1] == cloudpickle.dumps(value, protocol=5)
    back = pickle.loads(frames[1])
    assert back == value or (value != value and back != back)  # nan


def test_a_subclass_of_a_plain_type_still_goes_through_cloudpickle() -> None:
    assert type(Level.LOW) not in PLAIN_TYPES
    codec = Codec(SECRET)
    assert codec.decode(KEY, codec.seal(KEY, codec.encode(Level.LOW))) is Level.LOW


@pytest.mark.parametrize(
    "value", [7, "x" * 5000, {"a": [1, 2.5]}, np.arange(10), np.arange(100_000)], ids=lambda v: type(v).__name__
)
def test_sealed_values_carry_the_tag_of_the_general_construction(value: object) -> None:
    """Small values (one Poly1305 call, the one-time key from the cached HMAC pads) and large ones
    (fed frame by frame) store the tag a reader of the earlier code verifies."""
    codec = Codec(SECRET)
    stored = codec.seal(KEY, codec.encode(value))
    assert stored[1 + NONCE_LEN : 1 + SEAL_LEN] == _reference_tag(KEY, stored)
    back = codec.decode(KEY, stored)
    assert np.array_equal(back, value) if isinstance(value, np.ndarray) else back == value


@pytest.mark.parametrize("value", [7, np.arange(100_000)], ids=["small", "large"])
def test_a_tampered_or_moved_value_is_refused_on_both_paths(value: object) -> None:
    codec = Codec(SECRET)
    stored = codec.seal(KEY, codec.encode(value))
    flipped = bytearray(stored)
    flipped[-1] ^= 1
    with pytest.raises(ValueRejectedError, match="fails its MAC"):
        codec.decode(KEY, bytes(flipped))
    with pytest.raises(ValueRejectedError, match="fails its MAC"):
        codec.decode("ff:run-1:out:8", stored)
    with pytest.raises(ValueRejectedError, match="fails its MAC"):
        Codec(b"another secret").decode(KEY, stored)
