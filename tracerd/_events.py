"""Per-syscall events of a session on their way to subscribers (pure: no bcc, no grpc).

The kernel filters by session slot and syscall set; what reaches user space is routed by
the hub to the session's EventChannel, which hands copies to each subscriber's bounded
queue. Nothing here ever blocks the producer: a subscriber that falls behind loses the
events that do not fit, and every such event is counted, as are the events the kernel
could not record. Each batch a subscriber takes carries the cumulative counts, so
``received + lost`` always accounts for every event the session's filter selected.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from . import _records
from .model import SyscallEvent

#: Events a subscriber may have waiting before newer ones are dropped (and counted).
DEFAULT_QUEUE = 1 << 20


@dataclass(frozen=True)
class EventFilter:
    """What one subscriber wants of a session's events; empty sets: everything."""

    syscalls: frozenset[int] = frozenset()
    pids: frozenset[int] = frozenset()
    tids: frozenset[int] = frozenset()

    def wants(self, record: bytes) -> bool:
        pid, tid, nr = _records.ids_of(record)
        return ((not self.syscalls or nr in self.syscalls)
                and (not self.pids or pid in self.pids)
                and (not self.tids or tid in self.tids))

    @property
    def everything(self) -> bool:
        return not (self.syscalls or self.pids or self.tids)


@dataclass(frozen=True)
class EventBatch:
    """Events in kernel order (per CPU; per thread they are in order), and the losses so far.

    Either ``events`` (decoded) or ``records`` (the kernel's raw records, tracerd._records)
    holds the batch, as the subscriber asked.

    ``kernel_lost``: events of the session the kernel could not record (ring buffer full,
    or a call pushed out of the in-flight map); ``dropped``: events this subscriber's queue
    had no room for. Both cumulative. ``last``: no batch follows (the session ended and
    every event was delivered).
    """

    events: Sequence[SyscallEvent]
    kernel_lost: int
    dropped: int
    last: bool = False
    records: Sequence[bytes] = ()

    @property
    def lost(self) -> int:
        return self.kernel_lost + self.dropped

    def __len__(self) -> int:
        return len(self.events) or len(self.records)


class EventSubscriber:
    """One consumer of a session's events (a StreamEvents call, or ``run --events``)."""

    def __init__(self, channel: EventChannel, flt: EventFilter, queue_max: int) -> None:
        self.channel = channel
        self.filter = flt
        self.queue_max = queue_max
        self._queue: deque[bytes] = deque()
        #: events of the session this subscriber will not get: its queue was full, or
        #: they came before it subscribed and another subscriber took the backlog
        self.dropped = 0
        self.received = 0  #: events handed out in batches
        self.closed = False

    # producer side (channel lock held)
    def _offer(self, events: Sequence[bytes]) -> None:
        if not self.filter.everything:
            events = [e for e in events if self.filter.wants(e)]
        room = self.queue_max - len(self._queue)
        if len(events) > room:
            self.dropped += len(events) - max(room, 0)
            events = events[:max(room, 0)]
        self._queue.extend(events)

    # consumer side
    def next_batch(self, max_events: int = 4096, timeout_s: float | None = None, *,
                   raw: bool = False) -> EventBatch | None:
        """Up to ``max_events`` events, waiting up to ``timeout_s`` for the first one;
        ``raw``: as the kernel's records, not decoded (the cheap way to pass them on).

        None on timeout with nothing new. After the batch marked ``last``, returns one
        empty ``last`` batch again on every call.
        """
        ch = self.channel
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with ch.cond:
            while not self._queue and not ch.closed:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                ch.cond.wait(left)
            n = min(max_events, len(self._queue))
            records = [self._queue.popleft() for _ in range(n)]
            self.received += n
            lost, dropped, last = ch.kernel_lost, self.dropped, ch.closed and not self._queue
        # Decoded outside the lock: the producer never waits for it.
        if raw:
            return EventBatch(events=(), records=records, kernel_lost=lost, dropped=dropped,
                              last=last)
        return EventBatch(events=[_records.decode(r) for r in records], kernel_lost=lost,
                          dropped=dropped, last=last)

    def close(self) -> None:
        """Stop receiving (the client went away); frees the queue at once."""
        self.closed = True
        self.channel.unsubscribe(self)


class EventChannel:
    """A session's events: a backlog while nobody listens, then each subscriber's queue."""

    def __init__(self, backlog: int = DEFAULT_QUEUE) -> None:
        self.cond = threading.Condition()
        self.subscribers: list[EventSubscriber] = []
        #: events recorded before the first subscriber came (bounded, counted when full)
        self._backlog: EventSubscriber | None = EventSubscriber(self, EventFilter(), backlog)
        self.kernel_lost = 0
        self.routed = 0  #: events the session received from the kernel
        self.closed = False

    def offer(self, events: Sequence[bytes], kernel_lost: int) -> None:
        """Records (tracerd._records) of this session, in kernel order."""
        with self.cond:
            self.kernel_lost = max(self.kernel_lost, kernel_lost)
            if self.closed:
                return
            self.routed += len(events)
            if self._backlog is not None:
                self._backlog._offer(events)
            for sub in self.subscribers:
                sub._offer(events)
            self.cond.notify_all()

    def subscribe(self, flt: EventFilter, queue_max: int = DEFAULT_QUEUE) -> EventSubscriber:
        """A new subscriber; the first one also gets what was recorded before it came."""
        with self.cond:
            sub = EventSubscriber(self, flt, queue_max)
            if self._backlog is not None:
                early = self._backlog
                self._backlog = None
                sub.dropped += early.dropped
                sub._offer(list(early._queue))
            else:
                # What the session recorded before this stream came is the first
                # stream's; this one counts it as not received, so its received + lost
                # still accounts for the session's events.
                sub.dropped += self.routed
            self.subscribers.append(sub)
            return sub

    def unsubscribe(self, sub: EventSubscriber) -> None:
        with self.cond:
            if sub in self.subscribers:
                self.subscribers.remove(sub)
            sub._queue.clear()

    def close(self, kernel_lost: int) -> None:
        """The session ended and its last events were routed: subscribers drain, then end."""
        with self.cond:
            self.kernel_lost = max(self.kernel_lost, kernel_lost)
            self.closed = True
            self.cond.notify_all()
