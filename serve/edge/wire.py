"""WebSocket framing for the hot path: plain frames built and parsed without ``websockets``' machinery.

``websockets``' sans-I/O protocol builds a ``Frame`` object for every frame
and parses with generator-based readers. For the frames the spine sends and
receives by the thousand (one small unfragmented data frame per events
batch, one per ack) that machinery was ~30 % of a gateway's Python time
(sampled under load, 2026-11-22). This module does just the plain case:

* :func:`frame` builds an unfragmented frame (the server's unmasked, a
  client's masked);
* :func:`plain_frames` parses the leading run of *plain* client frames in a
  buffer and says where the first frame that is not plain starts, so that frame
  and everything after it can go to ``websockets``, which handles the rest
  of RFC 6455 (close handshake, pings, fragmentation, protocol errors and
  their close codes).

Limits: a frame is *plain* when it is final, has no reserved bits (no
extension is ever negotiated here), carries text, binary or pong, is masked
(as every client frame must be, RFC 6455 5.1), and its payload is at most ``max_size`` bytes
and under 64 KiB. Text payloads are returned as bytes; UTF-8 is the
caller's to check (``websockets`` does not check it either).
"""

from __future__ import annotations

import random
import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # the library's pure-Python fallback
    from websockets.utils import apply_mask

TEXT = 0x81  # first header byte of a final text frame
BINARY = 0x82
PONG = 0x8A


def frame(head: int, data: bytes, masked: bool = False) -> bytes:
    """One final frame: ``head`` is its first byte (:data:`TEXT`, :data:`BINARY`, ...)."""
    n = len(data)
    bit = 0x80 if masked else 0
    if n < 126:
        header = bytes((head, bit | n))
    elif n < 65536:
        header = struct.pack("!BBH", head, bit | 126, n)
    else:
        header = struct.pack("!BBQ", head, bit | 127, n)
    if not masked:
        return header + data
    # A load tool's mask: RFC 6455 wants unpredictable masks, which only matter
    # against proxies; the browser's own client draws them from a CSPRNG.
    mask = random.getrandbits(32).to_bytes(4, "big")
    return header + mask + apply_mask(data, mask)


def plain_frames(buf: bytearray, max_size: int) -> tuple[list[tuple[int, bytes]], int, bool]:
    """Parse the plain client frames at the start of ``buf``.

    Returns ``(frames, used, other)``: each frame as ``(head, payload)``,
    unmasked; how many bytes of ``buf`` they took; and whether a frame that is
    not plain starts at ``used`` (if not, what is left is an incomplete frame).
    Does not change ``buf``.
    """
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        head, b2 = buf[pos], buf[pos + 1]
        n, hdr = b2 & 0x7F, 2
        if n == 127 or not b2 & 0x80:  # a 64-bit length (over 64 KiB), or not masked
            return out, pos, True
        if n == 126:
            if end - pos < 4:
                break
            n, hdr = (buf[pos + 2] << 8) | buf[pos + 3], 4
        if n > max_size or not (head in (BINARY, TEXT) or (head == PONG and n <= 125)):
            return out, pos, True
        start = pos + hdr + 4  # after the mask
        stop = start + n
        if stop > end:
            break
        payload = apply_mask(bytes(buf[start:stop]), bytes(buf[start - 4 : start]))
        out.append((head, payload))
        pos = stop
    return out, pos, False
