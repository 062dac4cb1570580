"""The wire format of batched invocations, shared by the http invoker and the gateway."""

from __future__ import annotations

import struct

BATCH_TYPE = "application/x-fanflow-batch"
"""``POST /invoke`` with this content type carries several payloads, each framed by its length
(4 bytes, little-endian): one request, one verification pass and one queue push for all of them."""

_FRAME = struct.Struct("<I")


def frame(payloads: list[bytes]) -> bytes:
    """The body of a batched ``POST /invoke``."""
    return b"".join(_FRAME.pack(len(p)) + p for p in payloads)


def unframe(body: bytes) -> list[bytes] | None:
    """The payloads of a batched body; None when the framing does not add up."""
    out, at = [], 0
    while at < len(body):
        if at + _FRAME.size > len(body):
            return None
        (size,) = _FRAME.unpack_from(body, at)
        at += _FRAME.size
        if at + size > len(body):
            return None
        out.append(body[at : at + size])
        at += size
    return out or None
