"""The wire format between the service and its measuring process.

A frame is an 8-byte big-endian unsigned length followed by that many bytes: a pickle (protocol 5) of one message,
a dict. Frames travel on the child's stdin (requests) and on a private copy of its stdout (replies); the child
points its own stdout at stderr, so what a library prints never corrupts a frame. Pickle is safe here because both
ends are the same program, started by the service itself; nothing from the network is unpickled.

Requests carry ``"kind"`` (``measure_op``, ``measure_network``, ``start_duet``, ``close_duet``, ``ping``) and the
item's arguments (see :mod:`profiler_service.isolation.child`). A reply is either ``{"ok": value,
"peak_rss_bytes": int}`` or ``{"error": message, "error_type": name}``; the first frame the child writes is
``{"ready": pid, "rss_bytes": int}``.
"""

from __future__ import annotations

import pickle
import struct
from typing import Any, BinaryIO

HEADER = struct.Struct(">Q")
#: The largest frame either side accepts (a reply is a few statistics; a request at most an architecture).
MAX_FRAME_BYTES = 256 << 20


def write_frame(stream: BinaryIO, message: dict[str, Any]) -> None:
    """Write ``message`` as one frame and flush."""
    payload = pickle.dumps(message, protocol=5)
    if len(payload) > MAX_FRAME_BYTES:
        raise ValueError(f"a frame of {len(payload)} bytes exceeds the {MAX_FRAME_BYTES}-byte limit")
    stream.write(HEADER.pack(len(payload)) + payload)
    stream.flush()


def read_frame(stream: BinaryIO) -> dict[str, Any]:
    """Read one frame; EOFError when the other side closed the pipe (also in the middle of a frame)."""
    header = _read_exactly(stream, HEADER.size)
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME_BYTES:
        raise ValueError(f"a frame announces {size} bytes, over the {MAX_FRAME_BYTES}-byte limit")
    message = pickle.loads(_read_exactly(stream, size))
    if not isinstance(message, dict):
        raise ValueError(f"a frame holds {type(message).__name__}, not a message dict")
    return message


def _read_exactly(stream: BinaryIO, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = stream.read(left)
        if not chunk:
            raise EOFError("the measuring process's pipe closed")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
