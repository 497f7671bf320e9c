"""serve.edge.wire against websockets' own protocol: what one builds the other parses, and back."""

from __future__ import annotations

import pytest
from websockets.frames import Opcode
from websockets.protocol import Protocol, Side, State

from serve.edge import wire


def open_client() -> Protocol:
    """The client side of an open connection: makes masked frames, parses the server's."""
    return Protocol(Side.CLIENT, state=State.OPEN, max_size=None)


def client_frames(send) -> bytes:
    proto = open_client()
    send(proto)
    return b"".join(proto.data_to_send())


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536])
def test_server_frames_parse_in_websockets(size):
    payload = bytes(i % 251 for i in range(size))
    proto = open_client()
    proto.receive_data(wire.frame(wire.BINARY, payload) + wire.frame(wire.TEXT, b"ok"))
    events = proto.events_received()
    assert [(e.opcode, e.fin, bytes(e.data)) for e in events] == [
        (Opcode.BINARY, True, payload),
        (Opcode.TEXT, True, b"ok"),
    ]


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535])
def test_client_frames_from_websockets_are_plain(size):
    payload = bytes(i % 251 for i in range(size))
    data = client_frames(lambda p: (p.send_binary(payload), p.send_text(b"hi"), p.send_pong(b"")))
    frames, used, other = wire.plain_frames(bytearray(data), 1 << 20)
    assert frames == [(wire.BINARY, payload), (wire.TEXT, b"hi"), (wire.PONG, b"")]
    assert used == len(data) and not other


def test_masked_frames_we_make_are_plain_to_ourselves():
    data = wire.frame(wire.BINARY, b"x" * 300, masked=True)
    assert wire.plain_frames(bytearray(data), 1 << 20) == (
        [(wire.BINARY, b"x" * 300)],
        len(data),
        False,
    )


def test_an_incomplete_frame_waits_for_its_bytes():
    first = client_frames(lambda p: p.send_binary(b"a" * 10))
    second = client_frames(lambda p: p.send_binary(b"b" * 200))
    for cut in (1, 2, 3, 5, 8, len(second) - 1):
        frames, used, other = wire.plain_frames(bytearray(first + second[:cut]), 1 << 20)
        assert frames == [(wire.BINARY, b"a" * 10)] and used == len(first) and not other


@pytest.mark.parametrize(
    "send",
    [
        lambda p: p.send_ping(b"x"),
        lambda p: p.send_close(1000, "bye"),
        lambda p: p.send_binary(b"part", fin=False),
        lambda p: p.send_binary(b"z" * 70_000),  # a 64-bit length
    ],
    ids=["ping", "close", "fragment", "large"],
)
def test_frames_that_are_not_plain_are_left_at_their_start(send):
    plain = client_frames(lambda p: p.send_binary(b"first"))
    rest = client_frames(send) + plain
    frames, used, other = wire.plain_frames(bytearray(plain + rest), 1 << 20)
    assert frames == [(wire.BINARY, b"first")] and used == len(plain) and other


def test_unmasked_reserved_bits_and_oversize_are_not_plain():
    unmasked = wire.frame(wire.BINARY, b"abc")
    assert wire.plain_frames(bytearray(unmasked), 1 << 20) == ([], 0, True)
    rsv = bytearray(wire.frame(wire.BINARY, b"abc", masked=True))
    rsv[0] |= 0x40
    assert wire.plain_frames(rsv, 1 << 20) == ([], 0, True)
    big = wire.frame(wire.BINARY, b"y" * 200, masked=True)
    assert wire.plain_frames(bytearray(big), 100) == ([], 0, True)
