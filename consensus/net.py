"""asyncio TCP transport between validators on loopback (or a LAN).

Each connection opens with the sender's 2-byte validator index, then carries framed messages
(messages.encode). Frames that are oversized or do not decode are dropped and counted; the
connection stays up unless the length prefix itself is impossible. Outgoing frames queue per peer;
a peer that is down is retried with backoff and frames queued beyond a bound are dropped (the
protocol's timeouts recover from loss). The sender index is not authenticated: a localnet
transport; everything the protocol relies on is signed inside the messages. A connection claiming
this validator's own index is refused, and frames from two live connections claiming one index
are logged (once a minute) and counted: both mean two processes run with one validator's key."""
from __future__ import annotations

import asyncio
import logging
import struct
from typing import Callable

from . import messages

log = logging.getLogger("consensus.net")
QUEUE_LIMIT = 10_000
# A validator writes to a peer over one connection at a time: frames from two live connections
# claiming one index within this many seconds mean two processes run with that index.
DUPLICATE_WINDOW_S = 2.0
WARN_EVERY_S = 60.0


class Network:
    def __init__(self, me: int, addresses: list[tuple[str, int]], deliver: Callable[[int, object], None],
                 delay_ms: float = 0.0):
        self.me, self.addresses, self.deliver, self.delay = me, addresses, deliver, delay_ms / 1000.0
        self.queues = {i: asyncio.Queue(QUEUE_LIMIT) for i in range(len(addresses)) if i != me}
        self.dropped = 0    # frames that did not decode or were too large
        self.overflow = 0   # frames dropped because a peer's queue was full
        self.duplicates = 0  # connections claiming this validator's index, or a second live one per sender
        self._last: dict[int, tuple[object, object, float]] = {}  # sender -> (connection, peer address, time)
        self._warned: dict[int, float] = {}
        self.tasks: list[asyncio.Task] = []
        self.server = None

    async def start(self) -> None:
        host, port = self.addresses[self.me]
        self.server = await asyncio.start_server(self._serve, host, port)
        self.tasks = [asyncio.create_task(self._writer(i)) for i in self.queues]

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        if self.server is not None:
            self.server.close()

    def send(self, to: int, msg) -> None:
        frame = messages.encode(msg)
        if self.delay:
            asyncio.get_running_loop().call_later(self.delay, self._enqueue, to, frame)
        else:
            self._enqueue(to, frame)

    def broadcast(self, msg) -> None:
        for i in self.queues:
            self.send(i, msg)

    def _enqueue(self, to: int, frame: bytes) -> None:
        if to not in self.queues:  # this validator itself, or no such validator
            return
        try:
            self.queues[to].put_nowait(frame)
        except asyncio.QueueFull:
            self.overflow += 1

    async def _writer(self, peer: int) -> None:
        backoff = 0.05
        while True:
            try:
                host, port = self.addresses[peer]
                _, writer = await asyncio.open_connection(host, port)
                writer.write(struct.pack(">H", self.me))
                backoff = 0.05
                while True:
                    frame = await self.queues[peer].get()
                    writer.write(frame)
                    await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (sender,) = struct.unpack(">H", await reader.readexactly(2))
            if not 0 <= sender < len(self.addresses):
                return
            peer, conn = writer.get_extra_info("peername"), object()
            if sender == self.me:
                self._duplicate(sender, f"a connection from {peer} claims this validator's own index {sender}: "
                                        "is a second validator running with this index and key?")
                return
            while True:
                head = await reader.readexactly(4)
                (length,) = struct.unpack(">I", head)
                if length > messages.MAX_MESSAGE:
                    self.dropped += 1
                    return  # cannot resynchronise a stream after an impossible length
                frame = head + await reader.readexactly(length)
                try:
                    msg = messages.decode(frame)
                except messages.DecodeError as exc:
                    self.dropped += 1
                    log.debug("dropped a frame from %d: %s", sender, exc)
                    continue
                now = asyncio.get_running_loop().time()
                last = self._last.get(sender)
                if last is not None and last[0] is not conn and now - last[2] < DUPLICATE_WINDOW_S:
                    self._duplicate(sender, f"validator {sender} is heard over two connections at once, from "
                                            f"{last[1]} and {peer}: two validators run with index {sender}?")
                self._last[sender] = (conn, peer, now)
                self.deliver(sender, msg)
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        finally:
            writer.close()

    def _duplicate(self, sender: int, why: str) -> None:
        self.duplicates += 1
        now = asyncio.get_running_loop().time()
        if now - self._warned.get(sender, -WARN_EVERY_S) >= WARN_EVERY_S:
            self._warned[sender] = now
            log.warning(why)
