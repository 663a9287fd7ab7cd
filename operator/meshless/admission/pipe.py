"""The pipe between the operator and its admission child process: one message per frame, a
4-byte big-endian length then the pickled message.

Pickle is safe here: both ends are this package, in the same container, on an anonymous pipe
(the child's stdin and stdout) that nothing else can open. The operator sends
mirror.Message values down; the child sends `Listening` once it serves, `Synced` for each
`mirror.SyncMessage` it reached, and the Warn/Audit `AdmissionRecord`s for the policy status
back up.
"""

from __future__ import annotations

import asyncio
import pickle
import struct
from dataclasses import dataclass

_LENGTH = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class Listening:
    """The child's server accepts connections at `port`."""

    port: int


@dataclass(frozen=True, slots=True)
class Synced:
    """The child has applied every message sent before `mirror.SyncMessage(seq)`."""

    seq: int


def frame(message: object) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(body)) + body


async def read_frame(reader: asyncio.StreamReader) -> object | None:
    """The next message, or None when the other end has closed the pipe."""
    try:
        header = await reader.readexactly(_LENGTH.size)
        (length,) = _LENGTH.unpack(header)
        body = await reader.readexactly(length)
    except asyncio.IncompleteReadError:
        return None
    message: object = pickle.loads(body)
    return message
