"""The gateway's side of auth (issue 11, SPEC "Authentication"): the cached auth state,
the token table, who a request comes from, and password work off the actor's thread.

- ``GatewayAuth.state`` is storage's AuthState as last pushed (AUTH_STATE) or fetched
  (AUTH_STATE_GET at start, and whenever storage's status shows another auth revision).
  Storage stays the authority: it checks every entry at apply and every client read; the
  gateway checks the ops it answers itself (member_*, move_leader, status, hash_kv,
  defragment) and pre-checks the others, so a refused request costs no log entry and no
  scrypt run.
- Tokens (etcd's simple tokens): ``sha256(token) -> [user, expires (monotonic)]``. Only
  the hash is kept, here and in the log. A token is granted by an applied `authenticate`
  entry (AUTH_TOKEN, every member's gateway gets it, so a token works on every member);
  it lives ``--auth-token-ttl`` seconds from its last use on this member; it ends when
  its user is deleted or its password changes, and every token ends with auth_disable.
  Tokens are memory only: a restarted gateway has none (clients authenticate again, on
  ``invalid_auth_token``). A token this member does not know (``may_be_granted``) may come
  from an `authenticate` entry not applied here yet: the gateway re-checks it once after a
  read-index barrier before it answers ``invalid_auth_token``.
- Who asks (``resolve``), with auth enabled: the token's user; else the user of the
  connection's client key (ZAP User-Id, ``--client-cert-auth``); else nobody (None),
  which ``check`` refuses with ``user_empty`` except for authenticate and auth_status.
  With auth disabled, nobody (a token is not even looked at), as etcd.
- ``MEMBER`` (storage.auth.check): the ZAP User-Id of a connection made with the
  cluster's own client key (another member's corruption checker, this member's gRPC
  gateway), or a connection of the private gRPC proxy socket whose routing id says so
  (the gateway actor decides, ``PROXY_MEMBER``). ``resolve`` gives it as
  ``(MEMBER, auth_revision)``, token or not, auth enabled or not; ``check`` lets it run
  MEMBER_OPS only (`status`, `hash_kv`, `history`), storage checks its `history` the same
  way, and the watch port serves it every topic.
- ``PasswordWork``: scrypt runs (verify, hash) in a small thread pool (hashlib.scrypt
  releases the GIL); at most ``MAX_QUEUED`` wait, beyond that requests are refused at
  once (``unavailable``); the actor collects finished jobs in ``done()``.
"""
from __future__ import annotations

import hashlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from actors.storage.auth import MEMBER, AuthState, check, hash_password, is_member, needs_lease_keys, verify_password
from protocol import errors

__all__ = ["MEMBER", "PROXY_MEMBER_ID", "GatewayAuth", "PasswordWork", "token_sha256"]
# The routing ids (a prefix, then anything) of the gRPC actor's own connections to the
# private proxy socket: they are MEMBER (the actor's status calls and its watches' reads).
PROXY_MEMBER_ID = b"\x1bqkv-member:"
# Ops that never need a user, whatever the state (check's OPEN_OPS that clients can send).
NO_USER_OPS = frozenset(("authenticate", "auth_status"))
PASSWORD_WORKERS = 4
MAX_QUEUED = 64
TOKEN_SWEEP_S = 1.0


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class GatewayAuth:
    def __init__(self, ttl_s: int, cert_auth: bool, own_client_key: str | None) -> None:
        self.ttl_s = max(1, int(ttl_s))
        self.cert_auth = cert_auth
        self.own_client_key = own_client_key
        self.state = AuthState()
        self.known = False  # an AUTH_STATE has arrived since start
        self.tokens: dict[str, list[Any]] = {}  # sha256 hex -> [user, expires_monotonic]
        # Z85 key -> user: read by the ZAP thread, so replaced whole, never changed in place.
        self.keys: dict[str, str] = {}

    # --- state --------------------------------------------------------------------------
    def set_state(self, new: AuthState) -> None:
        """A new auth state from storage: end the tokens it invalidates."""
        old = self.state
        self.state = new
        self.known = True
        if not new.enabled:
            self.tokens = {}
        elif self.tokens:
            for sha, (user, _exp) in list(self.tokens.items()):
                before, after = old.users.get(user), new.users.get(user)
                if after is None or (before is not None and before.password != after.password):
                    del self.tokens[sha]
        self.keys = {u.key: name for name, u in new.users.items() if u.key}

    def grant(self, grants: list) -> int:
        """AUTH_TOKEN grants ``[sha256_hex, user, issued_unix_s, key]``; a grant older than
        the TTL by wall clock (a replay after a storage restart) is ignored."""
        now_wall, now = time.time(), time.monotonic()
        added = 0
        for sha, user, issued, _key in grants:
            age = max(0.0, now_wall - issued)
            if age >= self.ttl_s or not isinstance(sha, str) or not isinstance(user, str):
                continue
            user_now = self.state.users.get(user)
            if self.known and user_now is None:
                continue  # deleted meanwhile
            self.tokens[sha] = [user, now + self.ttl_s - age]
            added += 1
        return added

    def sweep(self) -> None:
        now = time.monotonic()
        for sha in [s for s, (_, exp) in self.tokens.items() if exp <= now]:
            del self.tokens[sha]

    # --- ZAP ----------------------------------------------------------------------------
    def zap_lookup(self, key: bytes) -> str:
        """Every key may connect (encryption for everyone); the User-Id names a member (the
        cluster's own client key) or, with --client-cert-auth, the user the key is
        registered on; "" otherwise. Runs on the ZAP thread: reads only."""
        k = key.decode("ascii", "replace") if isinstance(key, bytes) else str(key)
        if self.own_client_key is not None and k == self.own_client_key:
            return MEMBER
        if self.cert_auth:
            return self.keys.get(k, "")
        return ""

    # --- requests -----------------------------------------------------------------------
    def resolve(self, token: str | None, zap_user: str, op_name: str) -> Any:
        """The auth of a request: None (nobody), or ``(user, auth_revision)`` (the user
        MEMBER for a member's connection). Raises invalid_auth_token for a token that is
        unknown or expired (auth enabled)."""
        st = self.state
        if zap_user == MEMBER:
            return (MEMBER, st.revision)
        if not st.enabled or op_name in NO_USER_OPS:
            return None
        if token is not None:
            entry = self.tokens.get(token_sha256(token))
            now = time.monotonic()
            if entry is None or entry[1] <= now:
                raise errors.InvalidAuthToken()
            entry[1] = now + self.ttl_s  # etcd's simple tokens: the TTL counts from the last use
            return (entry[0], st.revision)
        if zap_user:
            return (zap_user, st.revision)
        return None

    def may_be_granted(self, token: str | None) -> bool:
        """Whether a token ``resolve`` refused may still be granted here: auth is enabled
        and this member has never seen it (its `authenticate` entry, committed on another
        member, may not have applied here yet). The gateway then waits for a read-index
        barrier (this member applied what the leader had committed) and resolves once
        more. A token that is known but expired, or ended, is not waited for."""
        return self.state.enabled and token is not None and token_sha256(token) not in self.tokens

    def precheck(self, auth: Any, op: dict) -> None:
        """Refuse at the gateway what storage would refuse anyway (and what only the gateway
        answers). Ops whose check needs a lease's keys are left to storage."""
        if needs_lease_keys(op) and not is_member(auth):
            return
        check(self.state, auth, op)


class PasswordWork:
    """scrypt off the actor's thread, bounded."""

    def __init__(self, workers: int = PASSWORD_WORKERS, max_queued: int = MAX_QUEUED) -> None:
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scrypt")
        self.max_queued = max_queued
        self.jobs: list[tuple[Future, Callable[[Any], None]]] = []
        self._dummy: dict | None = None

    def busy(self) -> bool:
        return bool(self.jobs)

    def _submit(self, fn: Callable[[], Any], then: Callable[[Any], None]) -> None:
        if len(self.jobs) >= self.max_queued:
            raise errors.Unavailable("too many authentication requests in progress; retry later")
        self.jobs.append((self.pool.submit(fn), then))

    def verify(self, wire: Any, password: str, then: Callable[[bool], None]) -> None:
        """Verify against ``wire``; with no hash (no such user, or a user without a
        password) a dummy hash is verified instead, so the answer takes as long either way
        and says nothing about which names exist."""
        def run() -> bool:
            if wire is None:
                if self._dummy is None:
                    self._dummy = hash_password("\x00 no such user \x00")
                verify_password(self._dummy, password)
                return False
            return verify_password(wire, password)

        self._submit(run, then)

    def hash(self, password: str, then: Callable[[Any], None]) -> None:
        self._submit(lambda: hash_password(password), then)

    def done(self) -> None:
        """Run the continuations of finished jobs (on the actor's thread)."""
        if not self.jobs:
            return
        pending: list[tuple[Future, Callable[[Any], None]]] = []
        finished: list[tuple[Future, Callable[[Any], None]]] = []
        for fut, then in self.jobs:
            (finished if fut.done() else pending).append((fut, then))
        self.jobs = pending
        for fut, then in finished:
            try:
                result = fut.result()
            except Exception as exc:  # a bug in hashing: the continuation reports it
                result = exc
            then(result)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
