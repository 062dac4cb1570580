"""How stores that serialize frame a value, and the MAC that seals it to its key.

A value is encoded once into *frames* (:class:`Encoded`): a small header, the
pickle-5 stream, and the large buffers (numpy arrays, ``PickleBuffer``) that
cloudpickle wrote out of band, kept as views of the original objects. The
stored bytes are then::

    flags:u8 | [nonce:16 | tag:16] | header | pickle | buffer_1 .. buffer_n

``flags`` says whether buffers follow (``OUT_OF_BAND``) and whether a tag is
present (``SEALED``); the header is ``n:u32 | n x len:u64 | pickle_len:u64``
when buffers follow, empty otherwise.

**The seal.** With a secret, the tag is a MAC over the *key name* the value is
stored under, the flags and every frame, so reading verifies it before anything
is unpickled, and

- a value written by someone without the secret is refused, and
- a value copied to another key (another run, another task, another role such
  as the DAG) is refused too: key names carry the run id and the task.

The MAC is Poly1305 under a one-time key: HMAC-SHA256 of the key name and a
random 16-byte nonce (stored with the value) under a key derived from the
secret, never the secret itself (a fresh key per message from a PRF, as in
ChaCha20-Poly1305, whose PRF is ChaCha20). Poly1305 rather than HMAC-SHA256 or keyed BLAKE2b over the whole value
because it measured 3.3x faster than HMAC-SHA256 here (1.4 GB/s against 0.45)
and a data-heavy run hashes every byte it moves twice (write and read). The
frames are fed one by one as memoryviews, so an MB-sized array is hashed in
place: the only copy is the one that builds the stored bytes, which the store
needs anyway.

Decoding hands ``pickle.loads`` memoryviews into the bytes read, so an array
is rebuilt *on* those bytes without a copy (and is read-only, as in Ray's
object store).

**Per value, for many small ones.** A DAG of thousands of tiny tasks encodes
and seals one small output per task, so the fixed costs count there (a 2,047-task
tree of ``add``: docs/processes-and-redis.md): scalars (:data:`PLAIN_TYPES`)
are pickled by the standard pickler, which writes the same bytes as cloudpickle
for them without building a cloudpickle ``Pickler`` (2.9 us against 0.4); the
one-time key's HMAC is a copy of one keyed once per codec (``HMAC.copy``
keeps the key's padded SHA-256 states: 1.5 us against 2.1 for ``hmac.digest``, same digest);
and a value whose frames are small is tagged by one ``Poly1305.generate_tag``
call over them joined. The stored bytes and the tag are the same as before.
"""

from __future__ import annotations

import hmac
import os
import pickle
import struct
from collections.abc import Sequence
from typing import Any, NamedTuple

import cloudpickle
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from fanflow.errors import SerializationError, ValueRejectedError

__all__ = ["Codec", "Encoded", "Sealed", "encode"]

OUT_OF_BAND = 0x01
SEALED = 0x02
NONCE_LEN = 16
SEAL_LEN = NONCE_LEN + 16
"""The nonce and the tag, between the flags and the frames."""

_COUNT = struct.Struct("<I")
_NAME_LEN = struct.Struct("<I")

PLAIN_TYPES = frozenset({int, float, bool, type(None), str, bytes})
"""Exact types the standard pickler writes as cloudpickle does, byte for byte: the C pickler saves
them itself before it would ask a pickler subclass (cloudpickle's ``reducer_override``, its
dispatch table), and protocol 5 never puts them out of band. A subclass (an ``IntEnum``) still goes
through cloudpickle, as does anything holding other objects."""

_SMALL_TAG_BYTES = 4096
"""Up to this size a value's frames are joined and tagged in one call (the copy costs less than
feeding Poly1305 frame by frame); from it, fed in place as memoryviews."""

Frame = bytes | memoryview


class Encoded(NamedTuple):
    """A value as frames, ready to be sealed to a key and stored."""

    flags: int
    frames: Sequence[Frame]
    """The header (possibly empty), the pickle stream, then the out-of-band buffers."""
    nbytes: int
    """The size of the stored bytes, tag included when sealed."""


class Sealed(NamedTuple):
    """A value's stored bytes as frames (see :meth:`Codec.seal_frames`)."""

    frames: Sequence[Frame]
    nbytes: int


def encode(value: Any, sealed: bool = False) -> Encoded:
    """Frame ``value`` as pickle-5 with its large buffers out of band (no copy of them).

    Raises :class:`SerializationError` when the value cannot be pickled.
    """
    tag = SEAL_LEN if sealed else 0
    if type(value) in PLAIN_TYPES:
        data = pickle.dumps(value, protocol=5)
        return Encoded(SEALED if sealed else 0, (b"", data), 1 + tag + len(data))
    buffers: list[pickle.PickleBuffer] = []
    try:
        data = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    except Exception as exc:
        raise SerializationError(
            f"a {type(value).__name__} cannot be pickled ({type(exc).__name__}: {exc}); return plain data "
            "(numbers, strings, containers, numpy arrays) or objects that support pickle"
        ) from exc
    flags = SEALED if sealed else 0
    if not buffers:
        return Encoded(flags, (b"", data), 1 + tag + len(data))
    raws = [b.raw() for b in buffers]
    sizes = [r.nbytes for r in raws]
    header = _COUNT.pack(len(raws)) + struct.pack(f"<{len(raws) + 1}Q", *sizes, len(data))
    nbytes = 1 + tag + len(header) + len(data) + sum(sizes)
    return Encoded(flags | OUT_OF_BAND, (header, data, *raws), nbytes)


class Codec:
    """Seals and opens stored values with the key derived from ``secret`` (None: no seal, no check).

    A codec without a secret writes plain frames and reads sealed ones without
    checking them: only a process that holds no secret uses one, and it trusts
    its store. A codec with a secret refuses anything it cannot verify.
    """

    def __init__(self, secret: bytes | None) -> None:
        # A key of its own for values, so a value's tag can never pass for a payload signature.
        self._key = None if secret is None else hmac.digest(secret, b"fanflow store values v1", "sha256")
        # Keyed once: each one-time key's HMAC starts from a copy, not from hashing the padded key again.
        self._keyed = None if self._key is None else hmac.new(self._key, digestmod="sha256")

    @property
    def sealing(self) -> bool:
        return self._key is not None

    def encode(self, value: Any) -> Encoded:
        """The frames of ``value``, sized for this codec's seal."""
        return encode(value, sealed=self._key is not None)

    def seal(self, key: str, value: Encoded) -> bytes:
        """The bytes to store ``value`` under ``key``: flags, tag (when sealing), frames."""
        return b"".join(self.seal_frames(key, value).frames)

    def seal_frames(self, key: str, value: Encoded) -> Sealed:
        """The stored bytes of ``value`` under ``key`` as a sequence of frames, never joined: a
        store that writes them one after another (:mod:`fanflow.store.redis`) sends an array's
        buffer from the array itself."""
        flags = bytes((value.flags,))
        if self._key is None:
            return Sealed((flags, *value.frames), value.nbytes)
        if not value.flags & SEALED:
            raise ValueError("encode with this codec before sealing")  # a programming error, not a user one
        nonce = os.urandom(NONCE_LEN)
        if value.nbytes < _SMALL_TAG_BYTES:
            tag = Poly1305.generate_tag(self._one_time_key(key, nonce), flags + b"".join(value.frames))
        else:
            tag = self._mac(key, nonce, flags, value.frames).finalize()
        return Sealed((flags, nonce, tag, *value.frames), value.nbytes)

    def decode(self, key: str, data: bytes | memoryview) -> Any:
        """Verify ``data`` read from ``key`` (when this codec has a secret), then unpickle it.

        Raises :class:`ValueRejectedError` when it is unsealed or its tag does not match.
        """
        view = memoryview(data)
        flags = view[0] if view.nbytes else 0
        pos = 1
        if flags & SEALED:
            pos += SEAL_LEN
            if view.nbytes < pos:
                raise ValueRejectedError(f"the value at {key!r} is truncated; it was not unpickled")
            if self._key is not None:
                nonce, tag = bytes(view[1 : 1 + NONCE_LEN]), bytes(view[1 + NONCE_LEN : pos])
                try:
                    if view.nbytes < _SMALL_TAG_BYTES:
                        signed = bytes(view[:1]) + bytes(view[pos:])
                        Poly1305.verify_tag(self._one_time_key(key, nonce), signed, tag)
                    else:
                        self._mac(key, nonce, view[:1], (view[pos:],)).verify(tag)
                except InvalidSignature:
                    raise ValueRejectedError(
                        f"the value at {key!r} fails its MAC: it was written without this run's secret "
                        "(tampered with, or copied from another key) or by a client with another secret; "
                        "it was not unpickled"
                    ) from None
        elif self._key is not None:
            raise ValueRejectedError(
                f"the value at {key!r} is not sealed with the run's secret, so it was not unpickled: "
                "something other than a fanflow worker or client of this secret wrote it"
            )
        if not flags & OUT_OF_BAND:
            return pickle.loads(view[pos:])
        (n,) = _COUNT.unpack_from(view, pos)
        pos += _COUNT.size
        sizes = struct.unpack_from(f"<{n + 1}Q", view, pos)
        pos += 8 * (n + 1)
        body = view[pos : pos + sizes[-1]]
        pos += sizes[-1]
        buffers = []
        for size in sizes[:-1]:
            buffers.append(view[pos : pos + size])
            pos += size
        return pickle.loads(body, buffers=buffers)

    def _mac(self, key: str, nonce: bytes, flags: bytes | memoryview, frames: Sequence[Frame]) -> Poly1305:
        """Poly1305 over ``flags`` and ``frames`` under the one-time key of (``key``, ``nonce``)."""
        mac = Poly1305(self._one_time_key(key, nonce))
        mac.update(flags)
        for frame in frames:
            mac.update(frame)
        return mac

    def _one_time_key(self, key: str, nonce: bytes) -> bytes:
        """HMAC-SHA256 of the length-prefixed ``key`` name and ``nonce`` under the values' key."""
        assert self._keyed is not None
        name = key.encode()
        mac = self._keyed.copy()
        mac.update(_NAME_LEN.pack(len(name)) + name + nonce)
        return mac.digest()
