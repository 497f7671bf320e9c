"""A bare ``websockets`` echo server: the ceiling the gateway is measured against.

python loadtests/echo_server.py PORT
"""

from __future__ import annotations

import asyncio
import sys

import websockets


async def echo(ws) -> None:
    async for message in ws:
        await ws.send(message)


async def main(port: int) -> None:
    try:
        import uvloop  # the same event loop the load generators use

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    async with websockets.serve(echo, "127.0.0.1", port, compression=None, max_size=2**20):
        await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
