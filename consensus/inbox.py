"""The consensus loop's inbox: the peers' messages served one per peer in turn, timers in place.

One FIFO for all peers let a Byzantine validator's flood (block requests at the transport's 2,000
frames a second, each ~1.7 ms of the core's time) hold every honest vote, proposal and timeout
behind thousands of its messages, seconds past a view's timeout. Served in turn, a flood delays
another peer's message by at most one of the flooder's. A peer's own messages stay in order: a
flooding leader's proposal waits behind its own requests, which slows only its view, up to the
timeout. A timer waits for what arrived before it, as in one FIFO (a QC or proposal that came
before a view's timer, while the core was busy validating, moves the view; served first, the
timer timed the view out with them waiting), but for at most TIMER_WAIT messages of each peer:
a flooder's backlog does not hold back the timers that move views when peers do not.
The per-peer bounds on what waits are the caller's (node.INBOX_PER_PEER, INBOX_BYTES_PER_PEER)."""
from __future__ import annotations

import asyncio
from collections import deque


TIMER_WAIT = 16  # of each peer's messages that came before a timer, at most this many go first


class FairInbox:
    def __init__(self) -> None:
        self._timers: deque = deque()         # (timer, {peer: its served count the timer waits for})
        self._waiting: dict[int, deque] = {}  # peer -> its messages, oldest first (only peers with some)
        self._turns: deque[int] = deque()     # the peers in _waiting, next to be served first
        self._served: dict[int, int] = {}     # peer -> its messages served so far
        self._size = 0
        self._waiter: asyncio.Future | None = None

    def put(self, item, peer: int | None = None) -> None:
        """Queue `item` from `peer` (None: a timer, served once what came before it has been, up
        to TIMER_WAIT messages of each peer)."""
        if peer is None:
            self._timers.append((item, {p: self._served.get(p, 0) + min(len(q), TIMER_WAIT)
                                        for p, q in self._waiting.items()}))
        else:
            q = self._waiting.get(peer)
            if q is None:
                q = self._waiting[peer] = deque()
                self._turns.append(peer)
            q.append(item)
        self._size += 1
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def _timer_due(self) -> bool:
        return bool(self._timers) and all(p not in self._waiting or self._served.get(p, 0) >= n
                                          for p, n in self._timers[0][1].items())

    def get_nowait(self):
        """The oldest timer if it is due, else the next peer's oldest message (asyncio.QueueEmpty
        if none)."""
        if self._timer_due():
            item = self._timers.popleft()[0]
        elif self._turns:
            peer = self._turns.popleft()
            q = self._waiting[peer]
            item = q.popleft()
            self._served[peer] = self._served.get(peer, 0) + 1
            if q:
                self._turns.append(peer)  # its next message after every other peer's
            else:
                del self._waiting[peer]
        else:
            raise asyncio.QueueEmpty
        self._size -= 1
        return item

    async def get(self):
        # one reader (the consensus loop); a future per wait, of the running loop: the inbox is
        # made before the loop it is read in
        while not self._size:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.get_nowait()

    def qsize(self) -> int:
        return self._size
