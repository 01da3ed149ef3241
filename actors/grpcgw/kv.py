"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact, each one native request."""
from __future__ import annotations

from typing import Any

from actors.grpcgw.backend import Backend, kv_to_pb, rpc
from protocol import errors
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc

SERVICE = "etcdserverpb.KV"
SORT_ORDER = {0: "NONE", 1: "ASCEND", 2: "DESCEND"}
SORT_TARGET = {0: "KEY", 1: "VERSION", 2: "CREATE", 3: "MOD", 4: "VALUE"}
COMPARE_TARGET = {0: ("VERSION", "version"), 1: ("CREATE", "create_revision"), 2: ("MOD", "mod_revision"),
                  3: ("VALUE", "value"), 4: ("LEASE", "lease")}
COMPARE_RESULT = {0: "EQUAL", 1: "GREATER", 2: "LESS", 3: "NOT_EQUAL"}
MAX_INT64 = 2**63 - 1
# compares whose outcome does not depend on the store (etcd's for unknown enum values)
ALWAYS_TRUE = {"target": "CREATE", "result": "LESS", "create_revision": MAX_INT64}
ALWAYS_FALSE = {"target": "CREATE", "result": "LESS", "create_revision": 0}
ANY_KEY = {"target": "CREATE", "result": "GREATER", "create_revision": 0}  # true iff a key is in the range


# --- etcd requests -> native ops (without "op" for use inside a txn too) ------------------
def range_fields(r: rpc_pb2.RangeRequest) -> dict[str, Any]:
    """etcd 3.4's reading of a RangeRequest (etcdserver/apply.go Range, mvcc rangeKeys):
    a limit or revision <= 0 is none (the current revision), a min bound <= 0 none, a max
    bound < 0 leaves no key (the count stays the whole range's); a sort order other than
    ASCEND/DESCEND sorts nothing, except that a target other than KEY with order NONE
    sorts ascending. An unknown target that would be sorted by stays in the request and
    our validator refuses it (etcd 3.4 panics there: nil sorter)."""
    f: dict[str, Any] = {"key": r.key}
    if r.range_end:
        f["range_end"] = r.range_end
    for name in ("limit", "revision", "min_mod_revision", "min_create_revision"):
        v = getattr(r, name)
        if v > 0:
            f[name] = v
    for name in ("max_mod_revision", "max_create_revision"):
        v = getattr(r, name)
        if v > 0:
            f[name] = v
        elif v < 0:  # every key fails it: only the count is left
            f["count_only"] = True
    order = int(r.sort_order)
    if r.sort_target != 0 and order == 0:
        order = 1
    if order in (1, 2):
        f["sort_order"] = SORT_ORDER[order]
        if r.sort_target:
            f["sort_target"] = SORT_TARGET.get(r.sort_target, r.sort_target)
    for name in ("serializable", "keys_only", "count_only"):
        if getattr(r, name):
            f[name] = True
    if f.get("count_only"):
        f.pop("limit", None)  # etcd filters before its limit: no key, so never "more"
    return f


def put_fields(r: rpc_pb2.PutRequest) -> dict[str, Any]:
    f: dict[str, Any] = {"key": r.key, "value": r.value}
    if r.lease:
        f["lease"] = r.lease
    for name in ("prev_kv", "ignore_value", "ignore_lease"):
        if getattr(r, name):
            f[name] = True
    return f


def delete_fields(r: rpc_pb2.DeleteRangeRequest) -> dict[str, Any]:
    f: dict[str, Any] = {"key": r.key}
    if r.range_end:
        f["range_end"] = r.range_end
    if r.prev_kv:
        f["prev_kv"] = True
    return f


def compare_fields(c: rpc_pb2.Compare) -> dict[str, Any]:
    """etcd 3.4's compareKV for unknown enum values: an unknown result is true for every
    key (a VALUE compare is still false on an empty range); an unknown target compares 0
    with 0 (so only EQUAL is true). Those become compares that give the same outcome."""
    keys: dict[str, Any] = {"key": c.key}
    if c.range_end:
        keys["range_end"] = c.range_end
    if c.result not in COMPARE_RESULT:
        return {**(ANY_KEY if c.target == 3 else ALWAYS_TRUE), **keys}
    if c.target not in COMPARE_TARGET:
        return {**(ALWAYS_TRUE if c.result == 0 else ALWAYS_FALSE), **keys}
    target, field = COMPARE_TARGET[c.target]
    f: dict[str, Any] = {"target": target, "result": COMPARE_RESULT[c.result], **keys}
    f[field] = getattr(c, field)
    return f


def request_op_fields(op: rpc_pb2.RequestOp) -> dict[str, Any]:
    which = op.WhichOneof("request")
    if which == "request_range":
        return {"range": range_fields(op.request_range)}
    if which == "request_put":
        return {"put": put_fields(op.request_put)}
    if which == "request_delete_range":
        return {"delete_range": delete_fields(op.request_delete_range)}
    if which == "request_txn":
        return {"txn": txn_fields(op.request_txn)}
    return {}  # an empty RequestOp: our validator refuses it, as etcd's does


def txn_fields(t: rpc_pb2.TxnRequest) -> dict[str, Any]:
    return {"compare": [compare_fields(c) for c in t.compare],
            "success": [request_op_fields(o) for o in t.success],
            "failure": [request_op_fields(o) for o in t.failure]}


def has_empty_op(t: rpc_pb2.TxnRequest) -> bool:
    """etcd's checkTxnRequest answers an empty RequestOp (no request set) with "key not
    found", on either branch and at any depth, when it meets one before another error:
    ops are checked in order (success, then failure; a nested txn where it stands), after
    the op count and the compares' keys. An op it would refuse first stops the search
    (our validator then gives that error)."""
    if any(not c.key for c in t.compare):
        return False
    for op in (*t.success, *t.failure):
        which = op.WhichOneof("request")
        if which is None:
            return True
        if which == "request_txn":
            if has_empty_op(op.request_txn):
                return True
        elif not getattr(op, which).key:
            return False
    return False


# --- native results -> etcd responses ---------------------------------------------------
def range_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader | None) -> rpc_pb2.RangeResponse:
    return rpc_pb2.RangeResponse(header=header, kvs=[kv_to_pb(kv) for kv in r.get("kvs") or ()],
                                 more=bool(r.get("more")), count=r.get("count", 0))


def put_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader | None) -> rpc_pb2.PutResponse:
    prev = r.get("prev_kv")
    return rpc_pb2.PutResponse(header=header, prev_kv=kv_to_pb(prev) if prev else None)


def delete_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader | None) -> rpc_pb2.DeleteRangeResponse:
    return rpc_pb2.DeleteRangeResponse(header=header, deleted=r.get("deleted", 0),
                                       prev_kvs=[kv_to_pb(kv) for kv in r.get("prev_kvs") or ()])


def writes(r: dict[str, Any]) -> bool:
    """The txn (its executed ops, nested ones too) changed a key."""
    for item in r.get("responses") or ():
        (name, body), = item.items()
        if name == "put" or (name == "delete_range" and body.get("deleted")) or (name == "txn" and writes(body)):
            return True
    return False


def txn_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.TxnResponse:
    """etcd 3.4's TxnResponse: the full header on the txn only. A nested range, put or
    delete's header carries only the revision its op saw in the txn (storeTxnWrite: the
    revision before the txn, plus one once the txn changed a key; a put changes one, a
    delete when it deleted); a nested txn's header is empty."""
    changed = writes(r)
    state = {"rev": header.revision - 1 if changed else header.revision, "changed": False}
    return _txn_response(r, header, state)


def _txn_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader, state: dict[str, Any]) -> rpc_pb2.TxnResponse:
    out = []
    for item in r.get("responses") or ():
        (name, body), = item.items()
        if name == "put" or (name == "delete_range" and body.get("deleted")):
            state["changed"] = True
        seen = rpc_pb2.ResponseHeader(revision=state["rev"] + (1 if state["changed"] else 0))
        if name == "range":
            out.append(rpc_pb2.ResponseOp(response_range=range_response(body, seen)))
        elif name == "put":
            out.append(rpc_pb2.ResponseOp(response_put=put_response(body, seen)))
        elif name == "delete_range":
            out.append(rpc_pb2.ResponseOp(response_delete_range=delete_response(body, seen)))
        elif name == "txn":
            out.append(rpc_pb2.ResponseOp(response_txn=_txn_response(body, rpc_pb2.ResponseHeader(), state)))
    return rpc_pb2.TxnResponse(header=header, succeeded=bool(r.get("succeeded")), responses=out)


class KVServicer(rpc_pb2_grpc.KVServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend

    @rpc(SERVICE, "Range")
    async def Range(self, request: rpc_pb2.RangeRequest, context: Any) -> rpc_pb2.RangeResponse:
        reply = await self.b.call(context, {"op": "range", **range_fields(request)})
        return range_response(reply, self.b.header(reply))

    @rpc(SERVICE, "Put")
    async def Put(self, request: rpc_pb2.PutRequest, context: Any) -> rpc_pb2.PutResponse:
        reply = await self.b.call(context, {"op": "put", **put_fields(request)})
        return put_response(reply, self.b.header(reply))

    @rpc(SERVICE, "DeleteRange")
    async def DeleteRange(self, request: rpc_pb2.DeleteRangeRequest, context: Any) -> rpc_pb2.DeleteRangeResponse:
        reply = await self.b.call(context, {"op": "delete_range", **delete_fields(request)})
        return delete_response(reply, self.b.header(reply))

    @rpc(SERVICE, "Txn")
    async def Txn(self, request: rpc_pb2.TxnRequest, context: Any) -> rpc_pb2.TxnResponse:
        if has_empty_op(request):
            await self.b.abort(context, errors.KeyNotFound())
        reply = await self.b.call(context, {"op": "txn", **txn_fields(request)})
        return txn_response(reply, self.b.header(reply))

    @rpc(SERVICE, "Compact")
    async def Compact(self, request: rpc_pb2.CompactionRequest, context: Any) -> rpc_pb2.CompactionResponse:
        # etcd's compact revision is never below -1, so a negative one is always compacted:
        # ours starts at 0, so revision 0 gets that answer (after the auth and leader checks)
        req: dict[str, Any] = {"op": "compact", "revision": max(0, request.revision)}
        timeout = None
        if request.physical:  # etcd waits for the physical compaction as long as the caller does
            req["physical"] = True
            left = context.time_remaining()
            timeout = 600.0 if left is None else max(0.001, left - 0.05)
        reply = await self.b.call(context, req, timeout=timeout)
        return rpc_pb2.CompactionResponse(header=self.b.header(reply))


def add(server: Any, backend: Backend) -> None:
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(backend), server)
