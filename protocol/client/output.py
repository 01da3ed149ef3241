"""qkvctl output in etcdctl 3.4's shapes: ``simple``, ``json``, ``fields`` and ``table``.

Printers write bytes to a binary stream (values may be any bytes). Nothing here opens a
connection.
"""
from __future__ import annotations

import base64
import json
from typing import TYPE_CHECKING, Any, BinaryIO, Sequence

from protocol.client.types import (
    DeleteRangeResponse, KeyValue, PutResponse, RangeResponse, ResponseHeader, StatusResponse,
    TxnResponse,
)

if TYPE_CHECKING:
    from protocol.client.watch import WatchResponse  # the watch module imports zmq

FORMATS = ("simple", "json", "fields", "table")


class UnsupportedFormat(Exception):
    """etcdctl: ``Error: table not supported as output format`` (exit 4)."""


# -- formatting helpers ---------------------------------------------------------------------
def hex_bytes(b: bytes) -> bytes:
    """etcdctl --hex: every byte as ``\\xNN``."""
    return "".join(f"\\x{c:02x}" for c in b).encode()


def go_quote(b: bytes) -> str:
    """Go's ``%q`` of ``string(b)``: printable runes as is, the rest escaped."""
    out = ['"']
    named = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v",
             0x22: '\\"', 0x5C: "\\\\"}
    i = 0
    while i < len(b):
        c = b[i]
        if c < 0x80:
            if c in named:
                out.append(named[c])
            elif c < 0x20 or c == 0x7F:
                out.append(f"\\x{c:02x}")
            else:
                out.append(chr(c))
            i += 1
            continue
        for n in (2, 3, 4):  # one UTF-8 rune, if it decodes
            try:
                ch = b[i:i + n].decode("utf-8")
            except UnicodeDecodeError:
                continue
            if len(ch) == 1:
                if ch.isprintable():
                    out.append(ch)
                elif ord(ch) < 0x10000:
                    out.append(f"\\u{ord(ch):04x}")
                else:
                    out.append(f"\\U{ord(ch):08x}")
                i += n
                break
        else:
            out.append(f"\\x{c:02x}")
            i += 1
    out.append('"')
    return "".join(out)


def humanize_bytes(n: int) -> str:
    """go-humanize ``Bytes`` (SI): ``25 kB``, ``1.5 MB``."""
    if n < 10:
        return f"{n} B"
    sizes = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    e = 0
    v = float(n)
    while v >= 1000 and e < len(sizes) - 1:
        v /= 1000
        e += 1
    val = int(v * 10 + 0.5) / 10
    return f"{val:.0f} {sizes[e]}" if val >= 10 else f"{val:.1f} {sizes[e]}"


def go_duration(seconds: float) -> str:
    """Go's ``time.Duration.String()``: ``1.36424ms``, ``532µs``, ``1.5s``."""
    ns = int(round(seconds * 1e9))
    if ns == 0:
        return "0s"
    sign = "-" if ns < 0 else ""
    ns = abs(ns)

    def frac(v: int, unit: int) -> str:
        whole, rest = divmod(v, unit)
        digits = len(str(unit)) - 1
        s = str(whole)
        if rest:
            s += "." + f"{rest:0{digits}d}".rstrip("0")
        return s

    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return f"{sign}{frac(ns, 1_000)}µs"
    if ns < 1_000_000_000:
        return f"{sign}{frac(ns, 1_000_000)}ms"
    h, rem = divmod(ns, 3600 * 10**9)
    m, rem = divmod(rem, 60 * 10**9)
    s = frac(rem, 10**9) + "s"
    if h:
        return f"{sign}{h}h{m}m{s}"
    if m:
        return f"{sign}{m}m{s}"
    return f"{sign}{s}"


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """olekukonko/tablewriter as etcdctl sets it up: upper-case centred header, cells
    aligned right."""
    hdr = [h.upper() for h in header]
    widths = [len(h) for h in hdr]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def centre(text: str, w: int) -> str:
        gap = w - len(text)
        left = gap // 2
        return " " * left + text + " " * (gap - left)

    lines = [sep, "| " + " | ".join(centre(h, w) for h, w in zip(hdr, widths)) + " |", sep]
    for row in rows:
        lines.append("| " + " | ".join(c.rjust(w) for c, w in zip(row, widths)) + " |")
    lines.append(sep)
    return "\n".join(lines) + "\n"


# -- etcd-like JSON (protobuf field names, zero values left out) -------------------------
def header_json(h: ResponseHeader) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("cluster_id", "member_id", "revision", "raft_term"):
        v = getattr(h, name)
        if v:
            out[name] = v
    return out


def kv_json(kv: KeyValue) -> dict[str, Any]:
    out: dict[str, Any] = {"key": base64.b64encode(kv.key).decode()}
    for name in ("create_revision", "mod_revision", "version"):
        v = getattr(kv, name)
        if v:
            out[name] = v
    if kv.value:
        out["value"] = base64.b64encode(kv.value).decode()
    if kv.lease:
        out["lease"] = kv.lease
    return out


def response_json(resp: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"header": header_json(resp.header)}
    if isinstance(resp, RangeResponse):
        if resp.kvs:
            out["kvs"] = [kv_json(kv) for kv in resp.kvs]
        if resp.more:
            out["more"] = True
        if resp.count:
            out["count"] = resp.count
    elif isinstance(resp, PutResponse):
        if resp.prev_kv is not None:
            out["prev_kv"] = kv_json(resp.prev_kv)
    elif isinstance(resp, DeleteRangeResponse):
        if resp.deleted:
            out["deleted"] = resp.deleted
        if resp.prev_kvs:
            out["prev_kvs"] = [kv_json(kv) for kv in resp.prev_kvs]
    elif isinstance(resp, TxnResponse):
        if resp.succeeded:
            out["succeeded"] = True
        if resp.responses:
            out["responses"] = [{"Response": {_RESPONSE_NAME[type(r)]: response_json(r)}}
                                for r in resp.responses]
    return out


_RESPONSE_NAME = {RangeResponse: "ResponseRange", PutResponse: "ResponsePut",
                  DeleteRangeResponse: "ResponseDeleteRange", TxnResponse: "ResponseTxn"}


def dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Printer:
    """Prints responses as etcdctl does for one ``--write-out`` format."""

    def __init__(self, fmt: str, stream: BinaryIO, *, is_hex: bool = False,
                 value_only: bool = False) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown output format {fmt!r}")
        self.fmt = fmt
        self.out = stream
        self.is_hex = is_hex
        self.value_only = value_only

    def _line(self, data: bytes | str = b"") -> None:
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.out.write(data + b"\n")

    def _kv_simple(self, kv: KeyValue) -> None:
        k, v = kv.key, kv.value
        if self.is_hex:
            k, v = hex_bytes(k), hex_bytes(v)
        if not self.value_only:
            self._line(k)
        self._line(v)

    # fields ---------------------------------------------------------------------------------
    def _hdr_fields(self, h: ResponseHeader) -> None:
        self._line(f'"ClusterID" : {h.cluster_id}')
        self._line(f'"MemberID" : {h.member_id}')
        self._line(f'"Revision" : {h.revision}')
        self._line(f'"RaftTerm" : {h.raft_term}')

    def _kv_fields(self, kv: KeyValue, pfx: str = "") -> None:
        self._line(f'"{pfx}Key" : {go_quote(kv.key)}')
        self._line(f'"{pfx}CreateRevision" : {kv.create_revision}')
        self._line(f'"{pfx}ModRevision" : {kv.mod_revision}')
        self._line(f'"{pfx}Version" : {kv.version}')
        self._line(f'"{pfx}Value" : {go_quote(kv.value)}')
        self._line(f'"{pfx}Lease" : {kv.lease}')

    def need(self, *fmts: str) -> None:
        """UnsupportedFormat unless this printer's format is one of ``fmts`` (a command
        calls it before its request: a bad -w fails without touching the server)."""
        if self.fmt not in fmts:
            raise UnsupportedFormat(f"{self.fmt} not supported as output format")

    def fields(self, header: ResponseHeader, rows: Sequence[tuple[str, int | str]]) -> None:
        """``-w fields``: the header's fields, then ``"name" : value`` lines (leases)."""
        self._hdr_fields(header)
        for name, value in rows:
            self._line(f'"{name}" : {value}')

    # responses ----------------------------------------------------------------------------------
    def get(self, resp: RangeResponse) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "simple":
            for kv in resp.kvs:
                self._kv_simple(kv)
        elif self.fmt == "json":
            self._line(dumps(response_json(resp)))
        else:
            self._hdr_fields(resp.header)
            for kv in resp.kvs:
                self._kv_fields(kv)
            self._line(f'"More" : {str(resp.more).lower()}')
            self._line(f'"Count" : {resp.count}')

    def put(self, resp: PutResponse) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "simple":
            self._line("OK")
            if resp.prev_kv is not None:
                self._kv_simple(resp.prev_kv)
        elif self.fmt == "json":
            self._line(dumps(response_json(resp)))
        else:
            self._hdr_fields(resp.header)
            if resp.prev_kv is not None:
                self._kv_fields(resp.prev_kv, "Prev")

    def delete(self, resp: DeleteRangeResponse) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "simple":
            self._line(str(resp.deleted))
            for kv in resp.prev_kvs:
                self._kv_simple(kv)
        elif self.fmt == "json":
            self._line(dumps(response_json(resp)))
        else:
            self._hdr_fields(resp.header)
            self._line(f'"Deleted" : {resp.deleted}')
            for kv in resp.prev_kvs:
                self._kv_fields(kv, "Prev")

    def txn(self, resp: TxnResponse) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "json":
            self._line(dumps(response_json(resp)))
            return
        if self.fmt == "fields":
            self._hdr_fields(resp.header)
            self._line(f'"Succeeded" : {str(resp.succeeded).lower()}')
        else:
            self._line("SUCCESS" if resp.succeeded else "FAILURE")
        for r in resp.responses:
            if self.fmt == "simple":
                self._line()
            if isinstance(r, RangeResponse):
                self.get(r)
            elif isinstance(r, PutResponse):
                self.put(r)
            elif isinstance(r, DeleteRangeResponse):
                self.delete(r)
            elif self.fmt == "simple":
                self._line(f"unexpected response {r!r}")
            else:
                self._line(f'"Unknown" : {go_quote(repr(r).encode())}')

    def compact(self, revision: int) -> None:
        # etcdctl prints this whatever the format.
        self._line(f"compacted revision {revision}")

    def watch(self, resp: WatchResponse) -> None:
        """etcdctl 3.4's watch output for one response."""
        if resp.progress_notify:
            self.out.write(b"progress notify: %d\n" % resp.revision)
        if self.fmt == "json":
            events = []
            for e in resp.events:
                ev: dict[str, Any] = {}
                if e.type == "DELETE":
                    ev["type"] = 1
                ev["kv"] = kv_json(e.kv)
                if e.prev_kv is not None:
                    ev["prev_kv"] = kv_json(e.prev_kv)
                events.append(ev)
            self._line(dumps({"Header": header_json(resp.header), "Events": events,
                              "CompactRevision": resp.compact_revision, "Canceled": resp.canceled,
                              "Created": False}))
        elif self.fmt == "fields":
            self._hdr_fields(resp.header)
            for e in resp.events:
                self._line(f'"Type" : {e.type}')
                if e.prev_kv is not None:
                    self._kv_fields(e.prev_kv, "Prev")
                self._kv_fields(e.kv)
        else:
            for e in resp.events:
                self._line(e.type)
                if e.prev_kv is not None:
                    self._kv_simple(e.prev_kv)
                self._kv_simple(e.kv)
        self.out.flush()

    def endpoint_status(self, statuses: Sequence[tuple[str, StatusResponse]]) -> None:
        if self.fmt == "json":
            out = []
            for ep, s in statuses:
                st: dict[str, Any] = {"header": header_json(s.header)}
                for name, v in (("version", s.version), ("dbSize", s.db_size),
                                ("leader", s.leader), ("raftIndex", s.raft_index),
                                ("raftTerm", s.raft_term),
                                ("raftAppliedIndex", s.raft_applied_index),
                                ("errors", s.errors), ("dbSizeInUse", s.db_size_in_use),
                                ("isLearner", s.is_learner), ("watchURLs", s.watch_urls),
                                ("dbSizeQuota", s.db_size_quota)):
                    if v:
                        st[name] = v
                out.append({"Endpoint": ep, "Status": st})
            self._line(dumps(out))
            return
        if self.fmt == "fields":
            for ep, s in statuses:
                self._hdr_fields(s.header)
                self._line(f'"Version" : {go_quote(s.version.encode())}')
                self._line(f'"DBSize" : {s.db_size}')
                self._line(f'"DBSizeInUse" : {s.db_size_in_use}')
                self._line(f'"DBSizeQuota" : {s.db_size_quota}')
                self._line(f'"Leader" : {s.leader}')
                self._line(f'"IsLearner" : {str(s.is_learner).lower()}')
                self._line(f'"RaftIndex" : {s.raft_index}')
                self._line(f'"RaftTerm" : {s.raft_term}')
                self._line(f'"RaftAppliedIndex" : {s.raft_applied_index}')
                self._line(f'"Errors" : [{" ".join(s.errors)}]')
                self._line(f'"WatchURLs" : [{" ".join(s.watch_urls)}]')
                self._line(f'"Endpoint" : {go_quote(ep.encode())}')
                self._line()
            return
        header = ["endpoint", "ID", "version", "db size", "is leader", "is learner",
                  "raft term", "raft index", "raft applied index", "errors"]
        rows = [[ep, f"{s.header.member_id:x}", s.version, humanize_bytes(s.db_size),
                 str(s.leader == s.header.member_id and s.leader != 0).lower(),
                 str(s.is_learner).lower(), str(s.raft_term), str(s.raft_index),
                 str(s.raft_applied_index), ", ".join(s.errors)] for ep, s in statuses]
        if self.fmt == "table":
            # etcd 3.4's columns, plus the space in use and the quota after DB SIZE
            header[4:4] = ["db size in use", "db size quota"]
            for row, (_, s) in zip(rows, statuses):
                row[4:4] = [humanize_bytes(s.db_size_in_use), humanize_bytes(s.db_size_quota)]
            self.out.write(render_table(header, rows).encode())
        else:
            for row in rows:
                self._line(", ".join(row))

    def endpoint_health(self, results: Sequence[dict[str, Any]], err_stream: BinaryIO) -> None:
        """``results``: dicts with endpoint, health (bool), took (str), error (str)."""
        if self.fmt == "json":
            self._line(dumps([{k: v for k, v in r.items() if k != "error" or v}
                              for r in results]))
        elif self.fmt == "table":
            rows = [[r["endpoint"], str(r["health"]).lower(), r["took"], r.get("error", "")]
                    for r in results]
            self.out.write(render_table(["endpoint", "health", "took", "error"], rows).encode())
        elif self.fmt == "fields":
            for r in results:
                self._line(f'"Endpoint" : {go_quote(r["endpoint"].encode())}')
                self._line(f'"Health" : {str(r["health"]).lower()}')
                self._line(f'"Took" : {r["took"]}')
                self._line(f'"Error" : {r.get("error", "")}')
                self._line()
        else:  # etcdctl 3.4 prints both verdicts on stderr
            for r in results:
                if r["health"]:
                    err_stream.write(f'{r["endpoint"]} is healthy: successfully committed proposal: '
                                     f'took = {r["took"]}\n'.encode())
                else:
                    err_stream.write(f'{r["endpoint"]} is unhealthy: failed to commit proposal: '
                                     f'{r.get("error", "")}\n'.encode())


# -- auth, user, role (etcdctl 3.4's printers; `auth status` is 3.5's) ---------------------
# etcdctl sends the request first and fails on an unsupported format afterwards (exit 4).
# Formats per printer: json for all; fields for every one but UserGet and UserList; table
# for none; `auth enable/disable` print their line whatever the format.
def _perm_range(key: bytes, end: bytes) -> bytes:
    text = b"\t[" + key + b", " + (end + b")" if end != b"\x00" else b"<open ended>")
    if _go_prefix_end(key) == end:
        text += b" (prefix " + key + b")"
    return text


def _go_prefix_end(key: bytes) -> bytes:
    """clientv3.GetPrefixRangeEnd (an all-0xff or empty key gives "\\x00")."""
    from protocol.client.types import prefix_end

    return prefix_end(key)


class AuthPrinter:
    """Auth/user/role output for one format, to a binary stream."""

    def __init__(self, fmt: str, stream: BinaryIO) -> None:
        self.p = Printer(fmt, stream)
        self.fmt = fmt

    def need(self, *fmts: str) -> None:
        self.p.need(*fmts)

    def header_only(self, resp: Any, simple: str | bytes) -> None:
        """user add/delete/passwd/grant-role/revoke-role, role add/delete/grant/revoke."""
        self.need("simple", "json", "fields")
        if self.fmt == "json":
            self.p._line(dumps({"header": header_json(resp.header)}))
        elif self.fmt == "fields":
            self.p._hdr_fields(resp.header)
        else:
            self.p._line(simple)

    def auth_status(self, resp: Any) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "json":
            body: dict[str, Any] = {"header": header_json(resp.header)}
            if resp.enabled:
                body["enabled"] = True
            if resp.auth_revision:
                body["authRevision"] = resp.auth_revision
            self.p._line(dumps(body))
        elif self.fmt == "fields":
            self.p._hdr_fields(resp.header)
            self.p._line(f'"Enabled" : {str(resp.enabled).lower()}')
            self.p._line(f'"AuthRevision" : {resp.auth_revision}')
        else:
            self.p._line(f"Authentication Status: {str(resp.enabled).lower()}")
            self.p._line(f"AuthRevision: {resp.auth_revision}")

    def user_get(self, name: str, resp: Any) -> None:
        self.need("simple", "json")
        if self.fmt == "json":
            body: dict[str, Any] = {"header": header_json(resp.header)}
            if resp.roles:
                body["roles"] = resp.roles
            self.p._line(dumps(body))
        else:
            self.p._line(f"User: {name}")
            self.p._line("Roles:" + "".join(f" {r}" for r in resp.roles))

    def user_list(self, resp: Any) -> None:
        self.need("simple", "json")
        if self.fmt == "json":
            body: dict[str, Any] = {"header": header_json(resp.header)}
            if resp.users:
                body["users"] = resp.users
            self.p._line(dumps(body))
        else:
            for u in resp.users:
                self.p._line(u)

    def role_get(self, name: str, resp: Any) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "json":
            body: dict[str, Any] = {"header": header_json(resp.header)}
            if resp.perm:
                perms = []
                for p in resp.perm:
                    d: dict[str, Any] = {}
                    if p.perm_type_value:
                        d["permType"] = p.perm_type_value
                    if p.key:
                        d["key"] = base64.b64encode(p.key).decode()
                    if p.range_end:
                        d["range_end"] = base64.b64encode(p.range_end).decode()
                    perms.append(d)
                body["perm"] = perms
            self.p._line(dumps(body))
        elif self.fmt == "fields":
            self.p._hdr_fields(resp.header)
            for p in resp.perm:
                self.p._line(f'"PermType" :  {p.perm_type}')
                self.p._line(f'"Key" : {go_quote(p.key)}')
                self.p._line(f'"RangeEnd" : {go_quote(p.range_end)}')
        else:
            self.p._line(f"Role {name}")
            for title, kinds in (("KV Read:", ("READ", "READWRITE")), ("KV Write:", ("WRITE", "READWRITE"))):
                self.p._line(title)
                for p in resp.perm:
                    if p.perm_type in kinds:
                        self.p._line(b"\t" + p.key if not p.range_end else _perm_range(p.key, p.range_end))

    def role_list(self, resp: Any) -> None:
        self.need("simple", "json", "fields")
        if self.fmt == "json":
            body: dict[str, Any] = {"header": header_json(resp.header)}
            if resp.roles:
                body["roles"] = resp.roles
            self.p._line(dumps(body))
        elif self.fmt == "fields":
            self.p._hdr_fields(resp.header)
            self.p._line('"Roles" :' + "".join(f" {go_quote(r.encode())}" for r in resp.roles))
        else:
            for r in resp.roles:
                self.p._line(r)

    def role_revoke_permission(self, resp: Any, role: str, key: bytes, end: bytes) -> None:
        if not end:
            text = b"Permission of key " + key + b" is revoked from role " + role.encode()
        elif end != b"\x00":
            text = b"Permission of range [" + key + b", " + end + b") is revoked from role " + role.encode()
        else:
            text = b"Permission of range [" + key + b", <open ended> is revoked from role " + role.encode()
        self.header_only(resp, text)
