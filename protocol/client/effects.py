"""Effects: how the lease, lock and election algorithms are shared by both clients.

The algorithms (protocol/client/leasecore.py, lockcore.py) are generators that never do
I/O, read a clock or sleep: they *yield* an effect (a request to send, a pause, "what time
is it", a watch to open or read) and are sent its result, or have its exception thrown in
at the yield. A driver runs one to its ``return``: ``run_sync`` with a ``perform`` that
blocks (the threaded classes), ``run_async`` with one that awaits (the asyncio classes).
So an algorithm exists once, and its tests feed it effects' results by hand.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Generator, TypeVar

T = TypeVar("T")
Algo = Generator[Any, Any, T]  # yields effects, is sent their results, returns a T


@dataclass(frozen=True, slots=True)
class Now:
    """-> the monotonic clock (float seconds)."""


@dataclass(frozen=True, slots=True)
class Sleep:
    """-> None after ``seconds``."""
    seconds: float


@dataclass(frozen=True, slots=True)
class Idle:
    """-> True when the owner asked to stop during the wait (a keep-alive loop's pause),
    False after ``seconds``."""
    seconds: float


@dataclass(frozen=True, slots=True)
class Call:
    """-> the ok reply map of ``client._call(req, write=write, timeout=timeout)``."""
    req: dict[str, Any]
    write: bool
    timeout: float | None = None


@dataclass(frozen=True, slots=True)
class Send:
    """-> the ok reply map of one attempt at the member ``url`` (leader-only lease ops);
    raises what that attempt raised."""
    url: str
    req: dict[str, Any]
    timeout: float


@dataclass(frozen=True, slots=True)
class WatchOpen:
    """-> a watch handle: ``client.watch(key, range_end, start_revision=, filters=)``."""
    key: bytes
    range_end: bytes = b""
    start_revision: int = 0
    filters: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True, slots=True)
class WatchGet:
    """-> the next ``WatchResponse``, None once ``timeout`` passed, or ``WATCH_ENDED``."""
    handle: Any
    timeout: float


@dataclass(frozen=True, slots=True)
class WatchClose:
    """-> None: the watch is canceled."""
    handle: Any


WATCH_ENDED = object()  # WatchGet's result once the watch is over (canceled, compacted)


def run_sync(algo: Algo[T], perform: Callable[[Any], Any]) -> T:
    """Run ``algo`` to its return value, performing each effect with ``perform``; an
    exception of ``perform`` is thrown into the algorithm at its yield."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = algo.send(value) if error is None else algo.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value, error = perform(effect), None
        except BaseException as exc:  # KeyboardInterrupt too: the algorithm cleans up
            value, error = None, exc


async def run_async(algo: Algo[T], perform: Callable[[Any], Awaitable[Any]]) -> T:
    """``run_sync`` for asyncio: ``perform`` is awaited. A cancellation of the caller's
    task is thrown into the algorithm, which may still yield its clean-up effects."""
    value: Any = None
    error: BaseException | None = None
    while True:
        try:
            effect = algo.send(value) if error is None else algo.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            value, error = await perform(effect), None
        except BaseException as exc:
            value, error = None, exc
