"""An in-process fake quorumkv gateway for client tests (protocol/SPEC.md, section 1-4).

A thread serves a ROUTER socket on a random free loopback port with a dict-based MVCC
store: range/put/delete_range/txn/compact/status, enough for the client library and
qkvctl. Switches for fault injection (set them from the test thread at any time):

- ``error_code``: answer every request (or only ops in ``error_ops``) with this error;
  ``error_applies``: apply the request first (a write that did happen);
- ``drop_replies``: apply requests but never answer (``drop_count``: only that many);
- ``delay_s``: answer after this delay (the request is applied at once);
- ``requests``: every decoded request received, in order (inspect it in tests).

Leases (SPEC section 3): ``lease_grant/revoke/keepalive/timetolive/leases`` in memory,
TTLs on a monotonic clock (``min_ttl``: the server minimum), expired leases revoked by
the serving loop (their keys deleted in one revision). ``leader_urls``: when set, the
leader-only ops (``lease_keepalive``, ``lease_timetolive``) answer ``not_leader`` with
these ``leader_client_urls``. Two servers may share one ``FakeStore`` (``store=``) to
stand for two members of one cluster.

Watch (SPEC section 5): ``history`` and an XPUB socket (``watch_url``, advertised by
``status``) that publishes every revision on the subscribed channels, answers every
subscribe with a progress message and sends a heartbeat each second.

Auth (issue 11): ``store.auth`` (``FakeAuth``) keeps users, roles, permissions and tokens
with etcd's errors; every request is checked once auth is enabled (``token`` -> user;
none -> ``user_empty``; unknown -> ``invalid_auth_token``; ranges need READ, writes WRITE,
management ops the root role). ``forget_tokens()`` stands for a restarted gateway;
``old_revision_count``: answer that many requests with ``auth_old_revision``.
``FakeServer(curve=True)``: both sockets are CURVE servers (``server_key``: the public
key, ``impostor=True``: it holds another secret than the key it advertises).

Usage: ``with FakeServer() as srv: Client([srv.endpoint])``. ``stop()`` joins the thread
and closes the socket and its context.
"""
from __future__ import annotations

import heapq
import threading
import time
from typing import Any

import zmq

from protocol.codec import pack, unpack
from protocol.errors import (
    AuthFailed, AuthNotEnabled, InvalidAuthToken, PermissionDenied, PermissionNotGranted,
    RoleAlreadyExist, RoleNotFound, RoleNotGranted, RootRoleNotExist, RootUserNotExist,
    UserAlreadyExist, UserEmpty, UserNotFound, AuthOldRevision,
    Compacted, DuplicateKey, FutureRevision, InvalidArgument, KeyNotFound, KeyNotProvided,
    LeaseExists, LeaseNotFound, Malformed, NotLeader, QkvError, UnknownOp,
)

CLUSTER_ID = 0x1234_5678_9ABC_DEF0
MEMBER_ID = 0x2E12_59D4_15F2_A040
RAFT_TERM = 2


def _in_range(k: bytes, key: bytes, end: bytes) -> bool:
    if not end:
        return k == key
    if end == b"\x00":
        return k >= key
    return key <= k < end


def _b(v: Any) -> bytes:
    if v is None:
        return b""
    if isinstance(v, str):
        return v.encode()
    if isinstance(v, (bytes, bytearray)):
        return bytes(v)
    raise InvalidArgument(f"expected bytes, got {type(v).__name__}")


class FakeStore:
    """A tiny MVCC model: full history as (revision, key, kv-or-None) entries."""

    def __init__(self) -> None:
        self.revision = 1
        self.compact_revision = 0
        self.kv: dict[bytes, dict[str, Any]] = {}
        self.history: list[tuple[int, bytes, dict[str, Any] | None]] = []
        self.leases: dict[int, dict[str, Any]] = {}  # id -> {"ttl": granted, "expires": monotonic}
        self.min_ttl = 2
        self.next_lease = 0x694D_77AA_9E38_2600
        self.lock = threading.RLock()
        self.auth = FakeAuth()

    def header(self) -> dict[str, Any]:
        return {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID, "revision": self.revision,
                "raft_term": RAFT_TERM}

    def snapshot(self, rev: int) -> dict[bytes, dict[str, Any]]:
        if rev == 0 or rev == self.revision:
            return self.kv
        if rev > self.revision:
            raise FutureRevision(current_revision=self.revision)
        if rev < self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)
        state: dict[bytes, dict[str, Any]] = {}
        for r, k, kv in self.history:
            if r > rev:
                break
            if kv is None:
                state.pop(k, None)
            else:
                state[k] = kv
        return state

    # -- ops; ``rev`` is the revision a write would create ------------------------------
    def range(self, f: dict[str, Any], view: dict[bytes, dict[str, Any]] | None = None) -> dict:
        key = _b(f.get("key"))
        if not key:
            raise KeyNotProvided()
        end = _b(f.get("range_end"))
        for n in ("limit", "revision"):
            if int(f.get(n) or 0) < 0:
                raise InvalidArgument(f"negative {n}")
        state = view if view is not None else self.snapshot(int(f.get("revision") or 0))
        kvs = [kv for k, kv in sorted(state.items()) if _in_range(k, key, end)]
        count = len(kvs)
        for field, lo, hi in (("mod_revision", "min_mod_revision", "max_mod_revision"),
                              ("create_revision", "min_create_revision", "max_create_revision")):
            lo_v, hi_v = int(f.get(lo) or 0), int(f.get(hi) or 0)
            if lo_v:
                kvs = [kv for kv in kvs if kv[field] >= lo_v]
            if hi_v:
                kvs = [kv for kv in kvs if kv[field] <= hi_v]
        order = f.get("sort_order") or "NONE"
        target = f.get("sort_target") or "KEY"
        if order not in ("NONE", "ASCEND", "DESCEND") or target not in (
                "KEY", "VERSION", "CREATE", "MOD", "VALUE"):
            raise InvalidArgument("bad sort")
        if order == "NONE" and target != "KEY":
            order = "ASCEND"
        field = {"KEY": "key", "VERSION": "version", "CREATE": "create_revision",
                 "MOD": "mod_revision", "VALUE": "value"}[target]
        if order != "NONE":
            kvs = sorted(kvs, key=lambda kv: kv[field], reverse=order == "DESCEND")
        limit = int(f.get("limit") or 0)
        more = bool(limit and len(kvs) > limit)
        if limit:
            kvs = kvs[:limit]
        if f.get("count_only"):
            kvs = []
        elif f.get("keys_only"):
            kvs = [{**kv, "value": b""} for kv in kvs]
        return {"kvs": kvs, "more": more, "count": count}

    def put(self, f: dict[str, Any], rev: int) -> dict:
        key = _b(f.get("key"))
        if not key:
            raise KeyNotProvided()
        value, lease = _b(f.get("value")), int(f.get("lease") or 0)
        prev = self.kv.get(key)
        if f.get("ignore_value") and value:
            raise InvalidArgument("ignore_value with a value")
        if f.get("ignore_lease") and lease:
            raise InvalidArgument("ignore_lease with a lease")
        if (f.get("ignore_value") or f.get("ignore_lease")) and prev is None:
            raise KeyNotFound()
        if lease and lease not in self.leases:
            raise LeaseNotFound()
        if f.get("ignore_value"):
            value = prev["value"]
        if f.get("ignore_lease"):
            lease = prev["lease"]
        kv = {"key": key, "value": value, "create_revision": prev["create_revision"] if prev else rev,
              "mod_revision": rev, "version": prev["version"] + 1 if prev else 1, "lease": lease}
        self.kv[key] = kv
        self.history.append((rev, key, kv))
        out: dict[str, Any] = {}
        if f.get("prev_kv") and prev is not None:
            out["prev_kv"] = prev
        return out

    def delete_range(self, f: dict[str, Any], rev: int) -> dict:
        key = _b(f.get("key"))
        if not key:
            raise KeyNotProvided()
        end = _b(f.get("range_end"))
        gone = [kv for k, kv in sorted(self.kv.items()) if _in_range(k, key, end)]
        for kv in gone:
            del self.kv[kv["key"]]
            self.history.append((rev, kv["key"], None))
        out: dict[str, Any] = {"deleted": len(gone)}
        if f.get("prev_kv"):
            out["prev_kvs"] = gone
        return out

    def compare(self, c: dict[str, Any]) -> bool:
        key, end = _b(c.get("key")), _b(c.get("range_end"))
        target, result = c.get("target"), c.get("result")
        field = {"VERSION": "version", "CREATE": "create_revision", "MOD": "mod_revision",
                 "VALUE": "value", "LEASE": "lease"}.get(target)
        if field is None or result not in ("EQUAL", "NOT_EQUAL", "GREATER", "LESS"):
            raise InvalidArgument("bad compare")
        want = _b(c.get(field)) if field == "value" else int(c.get(field) or 0)
        kvs = [kv for k, kv in self.kv.items() if _in_range(k, key, end)]
        if not end and not kvs:
            if field == "value":
                return False
            kvs = [{field: 0}]
        for kv in kvs:
            have = kv[field]
            ok = {"EQUAL": have == want, "NOT_EQUAL": have != want,
                  "GREATER": have > want, "LESS": have < want}[result]
            if not ok:
                return False
        return True

    def txn(self, f: dict[str, Any], rev: int) -> dict:
        for branch in ("success", "failure"):
            puts: set[bytes] = set()
            for op in f.get(branch) or ():
                if not isinstance(op, dict) or len(op) != 1:
                    raise InvalidArgument("a RequestOp is a one-entry map")
                if "put" in op:
                    k = _b(op["put"].get("key"))
                    if k in puts:
                        raise DuplicateKey()
                    puts.add(k)
        ok = all(self.compare(c) for c in f.get("compare") or ())
        responses = []
        for op in f.get("success" if ok else "failure") or ():
            (kind, body), = op.items()
            if kind == "range":
                responses.append({"range": self.range(body, self.kv)})
            elif kind == "put":
                responses.append({"put": self.put(body, rev)})
            elif kind == "delete_range":
                responses.append({"delete_range": self.delete_range(body, rev)})
            elif kind == "txn":
                responses.append({"txn": self.txn(body, rev)})
            else:
                raise InvalidArgument(f"unknown RequestOp {kind!r}")
        return {"succeeded": ok, "responses": responses}

    def compact(self, f: dict[str, Any]) -> dict:
        rev = int(f.get("revision") or 0)
        if rev > self.revision:
            raise FutureRevision(current_revision=self.revision)
        if rev <= self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)
        self.compact_revision = rev
        return {}

    # -- leases -------------------------------------------------------------------------
    def lease_grant(self, f: dict[str, Any]) -> dict:
        ttl = max(int(f.get("ttl") or 0), self.min_ttl)
        lid = int(f.get("ID") or 0)
        if lid < 0:
            raise InvalidArgument("negative lease id")
        if lid == 0:
            self.next_lease += 1
            lid = self.next_lease
        if lid in self.leases:
            raise LeaseExists()
        self.leases[lid] = {"ttl": ttl, "expires": time.monotonic() + ttl}
        return {"ID": lid, "ttl": ttl}

    def _drop_lease(self, lid: int) -> None:
        del self.leases[lid]
        rev = self.revision + 1
        keys = [k for k, kv in sorted(self.kv.items()) if kv["lease"] == lid]
        for k in keys:
            del self.kv[k]
            self.history.append((rev, k, None))
        if keys:
            self.revision = rev

    def lease_revoke(self, f: dict[str, Any]) -> dict:
        lid = int(f.get("ID") or 0)
        if lid not in self.leases:
            raise LeaseNotFound()
        self._drop_lease(lid)
        return {}

    def lease_keepalive(self, f: dict[str, Any]) -> dict:
        lid = int(f.get("ID") or 0)
        lease = self.leases.get(lid)
        if lease is None:
            raise LeaseNotFound()
        lease["expires"] = time.monotonic() + lease["ttl"]
        return {"ID": lid, "ttl": lease["ttl"]}

    def lease_timetolive(self, f: dict[str, Any]) -> dict:
        lid = int(f.get("ID") or 0)
        lease = self.leases.get(lid)
        if lease is None:
            return {"ID": lid, "ttl": -1, "granted_ttl": 0, "keys": []}
        out = {"ID": lid, "ttl": max(0, int(lease["expires"] - time.monotonic())),
               "granted_ttl": lease["ttl"], "keys": []}
        if f.get("keys"):
            out["keys"] = [k for k, kv in sorted(self.kv.items()) if kv["lease"] == lid]
        return out

    def lease_leases(self, f: dict[str, Any]) -> dict:
        return {"leases": [{"id": lid} for lid in sorted(self.leases)]}

    def expire_leases(self) -> bool:
        """Revoke every expired lease; True when the revision moved."""
        now = time.monotonic()
        before = self.revision
        for lid in [lid for lid, l in self.leases.items() if l["expires"] <= now]:
            self._drop_lease(lid)
        return self.revision != before

    # -- history (SPEC section 3, for the watch) ------------------------------------------
    def events(self, start: int, end: int, key: bytes, range_end: bytes, prev_kv: bool = False,
               no_put: bool = False, no_delete: bool = False) -> list[tuple[int, list[dict]]]:
        state: dict[bytes, dict[str, Any]] = {}
        out: dict[int, list[dict]] = {}
        for r, k, kv in self.history:
            if r > end:
                break
            prev = state.get(k)
            if kv is None:
                state.pop(k, None)
            else:
                state[k] = kv
            if r < start or not _in_range(k, key, range_end):
                continue
            if kv is None:
                if no_delete:
                    continue
                ev: dict[str, Any] = {"type": "DELETE", "kv": {"key": k, "value": b"", "create_revision": 0,
                                                               "mod_revision": r, "version": 0, "lease": 0}}
            else:
                if no_put:
                    continue
                ev = {"type": "PUT", "kv": kv}
            if prev_kv and prev is not None:
                ev["prev_kv"] = prev
            out.setdefault(r, []).append(ev)
        return sorted(out.items())

    def history_op(self, f: dict[str, Any]) -> dict:
        key, end = _b(f.get("key")), _b(f.get("range_end"))
        start = int(f.get("start_revision") or 0) or max(1, self.compact_revision)
        last = int(f.get("end_revision") or 0)
        if not last or last > self.revision:
            last = self.revision
        if start < self.compact_revision:
            raise Compacted(compact_revision=self.compact_revision)
        groups = self.events(start, last, key, end, bool(f.get("prev_kv")), bool(f.get("no_put")),
                             bool(f.get("no_delete")))
        return {"revisions": [{"revision": r, "events": evs} for r, evs in groups],
                "more": False, "last_revision": max(last, start - 1) if start <= self.revision else self.revision}

    def apply(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if op in FakeAuth.OPS:
            return getattr(self.auth, op)(req)
        if op == "range":
            return self.range(req)
        if op == "status":
            return {}
        if op == "compact":
            return self.compact(req)
        if op == "history":
            return self.history_op(req)
        if op in ("lease_grant", "lease_revoke", "lease_keepalive", "lease_timetolive",
                  "lease_leases"):
            return getattr(self, op)(req)
        if op not in ("put", "delete_range", "txn"):
            raise UnknownOp(f"unknown op {op!r}")
        rev = self.revision + 1
        before = len(self.history)
        result = getattr(self, op)(req, rev)
        if len(self.history) != before:
            self.revision = rev
        return result


def _covers(perm: dict[str, Any], key: bytes, end: bytes) -> bool:
    """Does the permission cover the whole range [key, end)?"""
    pk, pe = perm["key"], perm["range_end"]
    if not pe:
        return not end and key == pk
    if key < pk:
        return False
    if pe == b"\x00":
        return True
    if not end:
        return key < pe
    return end != b"\x00" and end <= pe


class FakeAuth:
    """etcd's auth store, in memory (no hashing: it is a test double)."""

    OPS = ("auth_enable", "auth_disable", "auth_status", "user_add", "user_delete", "user_get",
           "user_list", "user_change_password", "user_grant_role", "user_revoke_role",
           "role_add", "role_delete", "role_get", "role_list", "role_grant_permission",
           "role_revoke_permission")
    ADMIN_OPS = frozenset(OPS) - {"auth_status"} | {
        "member_add", "member_remove", "member_update", "member_promote", "move_leader",
        "defragment", "hash_kv", "snapshot", "alarm_disarm"}

    def __init__(self) -> None:
        self.enabled = False
        self.revision = 1
        self.users: dict[str, dict[str, Any]] = {}   # name -> {password, roles: set, key}
        self.roles: dict[str, list[dict[str, Any]]] = {}
        self.tokens: dict[str, str] = {}              # token -> user
        self.keys: list[str] = []                     # keys registered by authenticate
        self._n = 0

    def _bump(self) -> dict:
        self.revision += 1
        return {}

    def _user(self, f: dict[str, Any]) -> dict[str, Any]:
        name = f.get("name") or ""
        if not name:
            raise UserEmpty()
        if name not in self.users:
            raise UserNotFound()
        return self.users[name]

    def _role(self, name: str) -> list[dict[str, Any]]:
        if name not in self.roles:
            raise RoleNotFound()
        return self.roles[name]

    def _end_tokens(self, name: str) -> None:
        self.tokens = {t: u for t, u in self.tokens.items() if u != name}

    # -- authenticate and check -------------------------------------------------------
    def authenticate(self, f: dict[str, Any]) -> dict:
        if not self.enabled:
            raise AuthNotEnabled()
        u = self.users.get(f.get("name") or "")
        if u is None or u["password"] is None or u["password"] != f.get("password"):
            raise AuthFailed()
        self._n += 1
        token = f"fake-token.{self._n}"
        self.tokens[token] = f["name"]
        if f.get("key"):
            self.keys.append(f["key"])
        return {"token": token}

    def is_root(self, user: str) -> bool:
        return "root" in self.users.get(user, {}).get("roles", ())

    def can(self, user: str, key: bytes, end: bytes, write: bool) -> bool:
        if self.is_root(user):
            return True
        want = ("WRITE", "READWRITE") if write else ("READ", "READWRITE")
        for role in self.users.get(user, {}).get("roles", ()):
            for perm in self.roles.get(role, ()):
                if perm["perm_type"] in want and _covers(perm, key, end):
                    return True
        return False

    def check(self, req: dict[str, Any]) -> None:
        """Raise unless the request's token may do it (auth enabled only)."""
        if not self.enabled or req.get("op") == "auth_status":  # auth_status: anyone
            return
        token = req.get("token")
        if not token:
            raise UserEmpty()
        user = self.tokens.get(token)
        if user is None:
            raise InvalidAuthToken()
        op = req.get("op")
        if op in self.ADMIN_OPS:
            if not self.is_root(user):
                raise PermissionDenied()
            return
        key, end = _b(req.get("key")), _b(req.get("range_end"))
        if op in ("range", "history") and not self.can(user, key, end, False):
            raise PermissionDenied()
        if op in ("put", "delete_range") and not self.can(user, key, end, True):
            raise PermissionDenied()
        if op == "txn":
            for branch in ("success", "failure"):
                for o in req.get(branch) or ():
                    (kind, body), = o.items()
                    self.check({**body, "op": kind, "token": token})
            for c in req.get("compare") or ():
                if not self.can(user, _b(c.get("key")), _b(c.get("range_end")), False):
                    raise PermissionDenied()

    # -- management ops ---------------------------------------------------------------
    def auth_enable(self, f: dict[str, Any]) -> dict:
        if self.enabled:
            return {}
        if "root" not in self.users:
            raise RootUserNotExist()
        if not self.is_root("root"):
            raise RootRoleNotExist()
        self.enabled = True
        return self._bump()

    def auth_disable(self, f: dict[str, Any]) -> dict:
        if self.enabled:
            self.enabled = False
            self.tokens.clear()
            self._bump()
        return {}

    def auth_status(self, f: dict[str, Any]) -> dict:
        return {"enabled": self.enabled, "auth_revision": self.revision}

    def user_add(self, f: dict[str, Any]) -> dict:
        name = f.get("name") or ""
        if not name:
            raise UserEmpty()
        if name in self.users:
            raise UserAlreadyExist()
        self.users[name] = {"password": None if f.get("no_password") else (f.get("password") or ""),
                            "roles": set(), "key": f.get("public_key")}
        return self._bump()

    def user_delete(self, f: dict[str, Any]) -> dict:
        self._user(f)
        del self.users[f["name"]]
        self._end_tokens(f["name"])
        return self._bump()

    def user_get(self, f: dict[str, Any]) -> dict:
        return {"roles": sorted(self._user(f)["roles"])}

    def user_list(self, f: dict[str, Any]) -> dict:
        return {"users": sorted(self.users)}

    def user_change_password(self, f: dict[str, Any]) -> dict:
        self._user(f)["password"] = f.get("password") or ""
        self._end_tokens(f["name"])
        return self._bump()

    def user_grant_role(self, f: dict[str, Any]) -> dict:
        u = self._user(f)
        if f.get("role") != "root":
            self._role(f.get("role") or "")
        u["roles"].add(f["role"])
        return self._bump()

    def user_revoke_role(self, f: dict[str, Any]) -> dict:
        u = self._user(f)
        if f.get("role") not in u["roles"]:
            raise RoleNotGranted()
        u["roles"].discard(f["role"])
        return self._bump()

    def role_add(self, f: dict[str, Any]) -> dict:
        name = f.get("name") or ""
        if not name:
            raise InvalidArgument("etcdserver: role name is empty")
        if name in self.roles:
            raise RoleAlreadyExist()
        self.roles[name] = []
        return self._bump()

    def role_delete(self, f: dict[str, Any]) -> dict:
        self._role(f.get("name") or "")
        del self.roles[f["name"]]
        for u in self.users.values():
            u["roles"].discard(f["name"])
        return self._bump()

    def role_get(self, f: dict[str, Any]) -> dict:
        return {"perm": [dict(p) for p in self._role(f.get("name") or "")]}

    def role_list(self, f: dict[str, Any]) -> dict:
        return {"roles": sorted(self.roles)}

    def role_grant_permission(self, f: dict[str, Any]) -> dict:
        perms = self._role(f.get("name") or "")
        p = f.get("perm") or {}
        if p.get("perm_type") not in ("READ", "WRITE", "READWRITE"):
            raise InvalidArgument("bad perm_type")
        new = {"perm_type": p["perm_type"], "key": _b(p.get("key")), "range_end": _b(p.get("range_end"))}
        perms[:] = sorted([q for q in perms if (q["key"], q["range_end"]) != (new["key"], new["range_end"])]
                          + [new], key=lambda q: (q["key"], q["range_end"]))
        return self._bump()

    def role_revoke_permission(self, f: dict[str, Any]) -> dict:
        perms = self._role(f.get("name") or "")
        k, e = _b(f.get("key")), _b(f.get("range_end"))
        keep = [q for q in perms if (q["key"], q["range_end"]) != (k, e)]
        if len(keep) == len(perms):
            raise PermissionNotGranted()
        perms[:] = keep
        return self._bump()


class FakeServer:
    def __init__(self, host: str = "127.0.0.1", store: FakeStore | None = None, *,
                 curve: bool = False, impostor: bool = False) -> None:
        self.store = store if store is not None else FakeStore()
        self.leader_urls: list[str] | None = None  # set: leader-only ops answer not_leader
        self.error_code: str | None = None
        self.error_ops: set[str] | None = None
        self.error_applies = False
        self.drop_replies = False
        self.drop_count: int | None = None  # with drop_replies: drop only this many
        self.delay_s = 0.0
        self.requests: list[dict[str, Any]] = []
        self.version = "3.4.23-fake"
        self.old_revision_count = 0
        self.server_key: str | None = None
        secret = None
        if curve:
            public, secret = zmq.curve_keypair()
            self.server_key = public.decode()
            if impostor:  # advertise one key, hold the secret of another
                _, secret = zmq.curve_keypair()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        if secret is not None:
            self._sock.curve_server = True
            self._sock.curve_secretkey = secret
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.setsockopt(zmq.SNDHWM, 100_000)
        self._sock.setsockopt(zmq.RCVHWM, 100_000)
        port = self._sock.bind_to_random_port(f"tcp://{host}")
        self.endpoint = f"tcp://{host}:{port}"
        self.address = f"{host}:{port}"
        self._pub = self._ctx.socket(zmq.XPUB)
        self._pub.setsockopt(zmq.LINGER, 0)
        self._pub.setsockopt(zmq.XPUB_VERBOSE, 1)
        if secret is not None:
            self._pub.curve_server = True
            self._pub.curve_secretkey = secret
        self.watch_url = f"tcp://{host}:{self._pub.bind_to_random_port(f'tcp://{host}')}"
        self._channels: dict[bytes, dict[str, Any]] = {}  # topic -> {"last": rev, range...}
        self._published = self.store.revision
        self._heartbeat_at = time.monotonic()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=f"fakeserver-{port}", daemon=True)
        self._delayed: list[tuple[float, int, list[bytes]]] = []
        self._seq = 0

    def __enter__(self) -> "FakeServer":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def start(self) -> "FakeServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._sock.close(linger=0)
        self._pub.close(linger=0)
        self._ctx.term()

    def forget_tokens(self) -> None:
        """What a restarted gateway does: every token becomes unknown."""
        with self.store.lock:
            self.store.auth.tokens.clear()

    def enable_auth(self, root_password: str = "rootpw") -> None:
        """A root user with the root role, and auth on (test setup shortcut)."""
        a = self.store.auth
        with self.store.lock:
            a.users.setdefault("root", {"password": root_password, "roles": {"root"}, "key": None})
            a.enabled = True
            a.revision += 1

    def ops_received(self, op: str) -> int:
        with self._lock:
            return sum(1 for r in self.requests if r.get("op") == op)

    # -- the serving loop --------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._pub, zmq.POLLIN)
        while not self._stop.is_set():
            timeout_ms = 20
            if self._delayed:
                wait = self._delayed[0][0] - time.monotonic()
                timeout_ms = max(0, min(timeout_ms, int(wait * 1000) + 1))
            if poller.poll(timeout_ms):
                while True:
                    try:
                        sub = self._pub.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._on_subscription(sub)
                while True:
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    self._handle(frames)
            with self.store.lock:
                self.store.expire_leases()
                self._publish()
            now = time.monotonic()
            if now - self._heartbeat_at >= 1.0:
                self._heartbeat_at = now
                for topic in list(self._channels):
                    self._progress(topic)
            while self._delayed and self._delayed[0][0] <= now:
                _, _, out = heapq.heappop(self._delayed)
                self._send(out)

    # -- watch ---------------------------------------------------------------------------
    def _on_subscription(self, msg: bytes) -> None:
        if not msg:
            return
        topic = msg[1:]
        if msg[0] == 0:
            self._channels.pop(topic, None)
            return
        if topic[:2] != b"W1" or len(topic) < 11:
            return
        if topic not in self._channels:
            flags = topic[2]
            n = int.from_bytes(topic[3:7], "big")
            key = topic[7:7 + n]
            m = int.from_bytes(topic[7 + n:11 + n], "big")
            end = topic[11 + n:11 + n + m]
            with self.store.lock:
                self._publish()
                self._channels[topic] = {"last": self.store.revision, "key": key, "end": end,
                                         "prev_kv": bool(flags & 1), "no_put": bool(flags & 2),
                                         "no_delete": bool(flags & 4)}
        self._progress(topic)

    def _progress(self, topic: bytes) -> None:
        ch = self._channels.get(topic)
        if ch is None:
            return
        body = {"progress_revision": self._published, "last_event_revision": ch["last"]}
        self._pub.send_multipart([topic, pack(body)])

    def _publish(self) -> None:
        """Send every revision made since the last call on every channel (store locked)."""
        rev = self.store.revision
        if rev <= self._published:
            return
        for topic, ch in self._channels.items():
            for r, evs in self.store.events(self._published + 1, rev, ch["key"], ch["end"],
                                            ch["prev_kv"], ch["no_put"], ch["no_delete"]):
                self._pub.send_multipart([topic, pack({"revision": r, "prev_revision": ch["last"],
                                                       "events": evs})])
                ch["last"] = r
        self._published = rev

    def _send(self, frames: list[bytes]) -> None:
        try:
            self._sock.send_multipart(frames, zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client went away (ROUTER_MANDATORY) or its queue is full

    def _handle(self, frames: list[bytes]) -> None:
        ident, envelope, body = frames[0], frames[1:-1], frames[-1]
        rid = None
        try:
            if len(frames) < 2:
                raise Malformed()
            req = unpack(body)
            if not isinstance(req, dict):
                raise Malformed()
            rid = req.get("id")
            with self._lock:
                self.requests.append(req)
            reply = self._answer(req)
        except QkvError as err:
            reply = {"ok": False, "error": err.to_wire()}
        reply["id"] = rid
        if self.drop_replies:
            if self.drop_count is None:
                return
            if self.drop_count > 0:
                self.drop_count -= 1
                return
        out = [ident, *envelope, pack(reply)]
        if self.delay_s > 0:
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + self.delay_s, self._seq, out))
        else:
            self._send(out)

    def _answer(self, req: dict[str, Any]) -> dict[str, Any]:
        op = req.get("op")
        if self.error_code and (self.error_ops is None or op in self.error_ops):
            if self.error_applies:
                try:
                    with self.store.lock:
                        self.store.apply(req)
                except QkvError:
                    pass
            return {"ok": False, "error": {"code": self.error_code,
                                           "message": f"fake: {self.error_code}"}}
        auth = self.store.auth
        with self.store.lock:
            if op == "authenticate":
                return {"ok": True, "header": self.store.header(), **auth.authenticate(req)}
            auth.check(req)
        if self.old_revision_count > 0 and auth.enabled:
            self.old_revision_count -= 1
            raise AuthOldRevision()
        if self.leader_urls is not None and op in ("lease_keepalive", "lease_timetolive"):
            return {"ok": False, "error": NotLeader(leader_id=MEMBER_ID + 1,
                                                    leader_client_urls=list(self.leader_urls)).to_wire()}
        with self.store.lock:
            result = self.store.apply(req)
            self._publish()
        if op == "status":
            s = self.store
            result = {
                "version": self.version, "name": "fake", "db_size": 24576,
                "db_size_in_use": 16384, "leader": MEMBER_ID, "raft_index": s.revision + 7,
                "raft_term": RAFT_TERM, "raft_applied_index": s.revision + 7,
                "is_learner": False, "errors": [], "compact_revision": s.compact_revision,
                "client_urls": [self.endpoint], "watch_urls": [self.watch_url],
            }
        return {"ok": True, "header": self.store.header(), **result}
