"""etcdserverpb.KV: Range, Put, DeleteRange, Txn, Compact, each one native request."""
from __future__ import annotations

from typing import Any

from actors.grpcgw.backend import Backend, kv_to_pb, rpc
from protocol.etcdpb import rpc_pb2, rpc_pb2_grpc

SERVICE = "etcdserverpb.KV"
SORT_ORDER = {0: "NONE", 1: "ASCEND", 2: "DESCEND"}
SORT_TARGET = {0: "KEY", 1: "VERSION", 2: "CREATE", 3: "MOD", 4: "VALUE"}
COMPARE_TARGET = {0: ("VERSION", "version"), 1: ("CREATE", "create_revision"), 2: ("MOD", "mod_revision"),
                  3: ("VALUE", "value"), 4: ("LEASE", "lease")}
COMPARE_RESULT = {0: "EQUAL", 1: "GREATER", 2: "LESS", 3: "NOT_EQUAL"}


# --- etcd requests -> native ops (without "op" for use inside a txn too) ------------------
def range_fields(r: rpc_pb2.RangeRequest) -> dict[str, Any]:
    f: dict[str, Any] = {"key": r.key}
    if r.range_end:
        f["range_end"] = r.range_end
    for name in ("limit", "revision", "min_mod_revision", "max_mod_revision", "min_create_revision",
                 "max_create_revision"):
        v = getattr(r, name)
        if v:
            f[name] = v
    if r.sort_order:
        f["sort_order"] = SORT_ORDER.get(r.sort_order, r.sort_order)
    if r.sort_target:
        f["sort_target"] = SORT_TARGET.get(r.sort_target, r.sort_target)
    for name in ("serializable", "keys_only", "count_only"):
        if getattr(r, name):
            f[name] = True
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
    target, field = COMPARE_TARGET.get(c.target, (c.target, "version"))
    f: dict[str, Any] = {"target": target, "result": COMPARE_RESULT.get(c.result, c.result), "key": c.key}
    if c.range_end:
        f["range_end"] = c.range_end
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


def txn_response(r: dict[str, Any], header: rpc_pb2.ResponseHeader) -> rpc_pb2.TxnResponse:
    """etcd sets the header of every nested response too (the same header)."""
    out = []
    for item in r.get("responses") or ():
        (name, body), = item.items()
        if name == "range":
            out.append(rpc_pb2.ResponseOp(response_range=range_response(body, header)))
        elif name == "put":
            out.append(rpc_pb2.ResponseOp(response_put=put_response(body, header)))
        elif name == "delete_range":
            out.append(rpc_pb2.ResponseOp(response_delete_range=delete_response(body, header)))
        elif name == "txn":
            out.append(rpc_pb2.ResponseOp(response_txn=txn_response(body, header)))
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
        reply = await self.b.call(context, {"op": "txn", **txn_fields(request)})
        return txn_response(reply, self.b.header(reply))

    @rpc(SERVICE, "Compact")
    async def Compact(self, request: rpc_pb2.CompactionRequest, context: Any) -> rpc_pb2.CompactionResponse:
        req: dict[str, Any] = {"op": "compact", "revision": request.revision}
        timeout = None
        if request.physical:  # etcd waits for the physical compaction as long as the caller does
            req["physical"] = True
            left = context.time_remaining()
            timeout = 600.0 if left is None else max(0.001, left - 0.05)
        reply = await self.b.call(context, req, timeout=timeout)
        return rpc_pb2.CompactionResponse(header=self.b.header(reply))


def add(server: Any, backend: Backend) -> None:
    rpc_pb2_grpc.add_KVServicer_to_server(KVServicer(backend), server)
