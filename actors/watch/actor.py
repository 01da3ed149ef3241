"""The watch broadcaster: receives applied events from storage and fans them out on a
ZeroMQ XPUB socket bound at `--listen-watch-urls`.

This first version only keeps the process, its sockets and its place in the node; the
watch protocol (topics, frames, catch-up from history) is specified in SPEC.md section 5
when it lands. Events received now are counted and dropped.
"""
from __future__ import annotations

import zmq

from actors.runtime import messages as M
from actors.runtime.actor import Actor
from protocol import errors
from protocol.codec import unpack_msg


class WatchActor(Actor):
    role = "watch"

    def setup(self) -> None:
        self.pub = self.socket(zmq.XPUB, bind=self.cfg.listen_watch_urls, handler=self.on_subscription)
        self.events_in = self.socket(zmq.PULL, bind=self.endpoints.watch_events, handler=self.on_events)
        self.last_revision = 0

    def on_subscription(self, frames: list[bytes]) -> None:
        pass  # subscriptions carry no meaning until the watch protocol lands

    def on_events(self, frames: list[bytes]) -> None:
        try:
            msg_type, body = unpack_msg(frames[-1])
        except errors.QkvError:
            return
        if msg_type == M.EVENTS:
            self.last_revision = max(self.last_revision, body[-1][0])
