"""The asyncio client (protocol.client.aio.AsyncClient) behind the threaded Client's
synchronous surface, so that the client tests run unchanged against both.

``SyncAsyncClient(...)`` takes Client's arguments, starts a private event loop in a
daemon thread, builds an ``AsyncClient`` on it, and turns every call into
``asyncio.run_coroutine_threadsafe(...).result()``. Objects the async side returns are
wrapped the same way (``_Proxy``): methods run on the loop and are awaited there;
``async with`` / ``async for`` become ``with`` / ``for``; an ``asyncio.Event`` becomes an
object with ``wait(timeout)``/``is_set()``; ``StopAsyncIteration`` becomes
``StopIteration``. Data (responses, Compare, Op...) passes through as is.

There is NO protocol logic here: no retries, no timeouts of its own, no watch or lease
algorithm; every decision is the AsyncClient's. Many threads may call one adapter at
once: their calls become concurrent tasks on the one loop, as in an asyncio service.

``kit("thread" | "asyncio")`` gives the constructors a test needs (Client, Session, Lock,
Election) for either client; the tests take it from the ``client_kind`` fixtures
(tests/conftest.py).
"""
from __future__ import annotations

import asyncio
import inspect
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

_STOP = object()  # a StopIteration/StopAsyncIteration raised on the loop
_PLAIN = (type(None), bool, int, float, str, bytes, bytearray)


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()


class _Loop:
    """A private event loop in a daemon thread; it stops once nothing refers to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=_run_loop, args=(self.loop,), name="aioclient-loop",
                                       daemon=True)
        self.thread.start()
        # async object id -> its wrapper, so that one object always has one wrapper
        # (``lost == [lease]``, ``lock.session is session``).
        self.wrappers: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        self._wrapping = threading.Lock()  # many threads may wrap at once
        weakref.finalize(self, self.loop.call_soon_threadsafe, self.loop.stop)

    def run(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` called on the loop, its result awaited there when it is
        awaitable; the result (wrapped) in the calling thread."""
        if threading.current_thread() is self.thread:
            raise RuntimeError("a blocking adapter call from the loop's own thread (a callback) "
                               "would deadlock")
        args = tuple(_unwrap(a, self) for a in args)
        kwargs = {k: _unwrap(v, self) for k, v in kwargs.items()}

        async def call() -> Any:
            try:
                result = fn(*args, **kwargs)
                if asyncio.iscoroutine(result):
                    result = await result
                elif inspect.isawaitable(result):
                    # an object that attaches/grants on ``await`` (AsyncWatcher, AsyncLease...)
                    awaited = await result
                    result = result if awaited is None else awaited
                return result
            except (StopIteration, StopAsyncIteration):
                return _STOP

        result = asyncio.run_coroutine_threadsafe(call(), self.loop).result()
        if result is _STOP:
            raise StopIteration
        return self.wrap(result)

    def wrap(self, obj: Any) -> Any:
        """The sync face of something that came from the async side."""
        if isinstance(obj, _PLAIN) or isinstance(obj, _Proxy):
            return obj
        if isinstance(obj, list):
            return [self.wrap(o) for o in obj]
        if isinstance(obj, tuple) and type(obj) is tuple:
            return tuple(self.wrap(o) for o in obj)
        if isinstance(obj, asyncio.Event):
            return _Event(self, obj)
        if not _is_async(obj):
            return obj
        with self._wrapping:
            w = self.wrappers.get(id(obj))
            if w is None or w._obj is not obj:
                w = _Proxy(self, obj)
                self.wrappers[id(obj)] = w
            return w


_ASYNC_TYPES: dict[type, bool] = {}


def _is_async(obj: Any) -> bool:
    """Whether an object has an async face (coroutine methods, async iteration or context
    management, or a class of the asyncio modules, whose plain methods may return
    coroutines, as AsyncAuth's do): then it is used through a _Proxy. The txn builder is
    one too: its ``commit()`` returns the client's coroutine."""
    t = type(obj)
    known = _ASYNC_TYPES.get(t)
    if known is None:
        known = any(hasattr(t, n) for n in ("__aiter__", "__anext__", "__aenter__", "__await__")) \
            or t.__name__ == "Txn" or t.__module__.startswith("protocol.client.aio") or any(
                inspect.iscoroutinefunction(getattr(t, n, None)) or inspect.isasyncgenfunction(getattr(t, n, None))
                for n in dir(t) if not n.startswith("__"))
        _ASYNC_TYPES[t] = known
    return known


def _unwrap(v: Any, lp: _Loop) -> Any:
    """Arguments to the async side: wrappers -> their objects; a callback gets the
    wrappers of what it is given (it runs on the loop: it must not call the adapter)."""
    if isinstance(v, _Proxy):
        return v._obj
    if isinstance(v, list):
        return [_unwrap(x, lp) for x in v]
    if isinstance(v, tuple) and type(v) is tuple:
        return tuple(_unwrap(x, lp) for x in v)
    if callable(v) and not isinstance(v, type) and (inspect.isfunction(v) or inspect.ismethod(v)
                                                     or inspect.isbuiltin(v)):
        def callback(*a: Any) -> Any:
            return v(*(lp.wrap(x) for x in a))
        return callback
    return v


class _Event:
    """An ``asyncio.Event`` seen from another thread, as a ``threading.Event``."""

    def __init__(self, lp: _Loop, ev: asyncio.Event) -> None:
        self._loop, self._ev = lp, ev

    def is_set(self) -> bool:
        return self._ev.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        async def wait() -> bool:
            try:
                await asyncio.wait_for(self._ev.wait(), timeout)
                return True
            except asyncio.TimeoutError:
                return False
        return bool(self._loop.run(wait))


class _Proxy:
    """Any object of the async side used synchronously: its methods run on the loop."""

    def __init__(self, lp: _Loop, obj: Any) -> None:
        object.__setattr__(self, "_loop", lp)
        object.__setattr__(self, "_obj", obj)

    def __getattr__(self, name: str) -> Any:
        if name in ("_obj", "_loop"):  # not set yet (a failed __init__)
            raise AttributeError(name)
        attr = getattr(self._obj, name)
        if callable(attr) and not isinstance(attr, type) and not _is_async(attr):
            lp = self._loop

            def method(*args: Any, **kwargs: Any) -> Any:
                return lp.run(attr, *args, **kwargs)
            method.__name__ = name
            return method
        return self._loop.wrap(attr)

    def __setattr__(self, name: str, value: Any) -> None:
        self._loop.run(setattr, self._obj, name, _unwrap(value, self._loop))

    def __eq__(self, other: Any) -> bool:
        return self is other or (isinstance(other, _Proxy) and self._obj is other._obj)

    def __hash__(self) -> int:
        return id(self._obj)

    def __repr__(self) -> str:
        return f"sync({self._obj!r})"

    # -- async protocols as their sync twins -------------------------------------------
    def __enter__(self) -> Any:
        obj = self._obj
        if hasattr(obj, "__aenter__"):
            entered = self._loop.run(obj.__aenter__)
        else:
            entered = self._loop.run(obj.__enter__)
        return self if isinstance(entered, _Proxy) and entered._obj is obj else entered

    def __exit__(self, *exc: Any) -> Any:
        obj = self._obj
        if hasattr(obj, "__aexit__"):
            return self._loop.run(obj.__aexit__, *exc)
        return self._loop.run(obj.__exit__, *exc)

    def __iter__(self) -> Any:
        if hasattr(self._obj, "__aiter__"):
            it = self._loop.run(self._obj.__aiter__)
            return it if isinstance(it, _Proxy) and it._obj is not self._obj else self
        return iter(self._loop.run(iter, self._obj))

    def __next__(self) -> Any:
        return self._loop.run(self._obj.__anext__)

    def __bool__(self) -> bool:
        return True


class SyncAsyncClient(_Proxy):
    """An ``AsyncClient`` on a private loop, with ``Client``'s synchronous surface."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        from protocol.client.aio import AsyncClient

        lp = _Loop()
        obj = lp.run(AsyncClient, *args, **kwargs)
        obj = obj._obj if isinstance(obj, _Proxy) else obj
        super().__init__(lp, obj)
        with lp._wrapping:
            lp.wrappers[id(obj)] = self

    def close(self) -> None:
        """``await client.close()``. The loop keeps running (calls after close reach the
        AsyncClient, which refuses them) until the adapter is dropped."""
        self._loop.run(self._obj.close)

    def __enter__(self) -> "SyncAsyncClient":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _on_loop(cls_path: str) -> Callable[..., Any]:
    """A constructor of the async side, called as ``Cls(client_or_session, ...)`` with
    the adapter's objects: built (and awaited, when it is awaitable) on their loop."""
    module, _, name = cls_path.rpartition(".")

    def make(owner: Any, *args: Any, **kwargs: Any) -> Any:
        import importlib

        cls = getattr(importlib.import_module(module), name)
        if not isinstance(owner, _Proxy):
            raise TypeError(f"{name} needs an asyncio client's object, not {owner!r}")
        return owner._loop.run(cls, owner, *args, **kwargs)
    make.__name__ = name
    return make


@dataclass(frozen=True)
class Kit:
    """The constructors of one client kind, for tests written once for both."""
    name: str
    Client: Callable[..., Any]
    Session: Callable[..., Any]
    Lock: Callable[..., Any]
    Election: Callable[..., Any]
    Observer: Callable[..., Any]


def kit(kind: str) -> Kit:
    """``"thread"``: protocol.client's own classes; ``"asyncio"``: the adapter's."""
    if kind == "thread":
        from protocol.client import Client
        from protocol.client.concurrency import Election, Lock, Observer, Session

        return Kit("thread", Client, Session, Lock, Election, Observer)
    if kind == "asyncio":
        return Kit("asyncio", SyncAsyncClient,
                   _on_loop("protocol.client.aio_concurrency.AsyncSession"),
                   _on_loop("protocol.client.aio_concurrency.AsyncLock"),
                   _on_loop("protocol.client.aio_concurrency.AsyncElection"),
                   _on_loop("protocol.client.aio_concurrency.AsyncObserver"))
    raise ValueError(f"unknown client kind {kind!r}")


KINDS = ("thread", "asyncio")
