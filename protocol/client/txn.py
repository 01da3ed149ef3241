"""Transaction building blocks: ``Compare``, ``Op`` and the fluent ``Txn`` builder.

    Compare.value("k") == b"v"            -> {"target": "VALUE", "result": "EQUAL", "key": b"k", "value": b"v"}
    Compare.mod_revision("k") < 5         -> {"target": "MOD", "result": "LESS", "key": b"k", "mod_revision": 5}
    Op.put("k", "v"), Op.get("k", prefix=True), Op.delete("k"), Op.txn([...], [...], [...])

Nothing here performs I/O; ``Txn.commit()`` hands the request to the client.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from protocol.client.types import key_range, to_bytes

if TYPE_CHECKING:
    from protocol.client.client import Client
    from protocol.client.types import TxnResponse

_TARGET_FIELD = {
    "VERSION": "version",
    "CREATE": "create_revision",
    "MOD": "mod_revision",
    "VALUE": "value",
    "LEASE": "lease",
}
RESULTS = ("EQUAL", "NOT_EQUAL", "GREATER", "LESS")


@dataclass(frozen=True, slots=True)
class Compare:
    """One txn comparison: the key's ``target`` field ``result`` ``operand``."""

    target: str
    result: str
    key: bytes
    operand: Any
    range_end: bytes = b""

    def __post_init__(self) -> None:
        if self.target not in _TARGET_FIELD:
            raise ValueError(f"unknown compare target {self.target!r}")
        if self.result not in RESULTS:
            raise ValueError(f"unknown compare result {self.result!r}")

    def to_wire(self) -> dict[str, Any]:
        """The Compare map of SPEC section 3 (``txn``)."""
        wire: dict[str, Any] = {"target": self.target, "result": self.result, "key": self.key}
        if self.range_end:
            wire["range_end"] = self.range_end
        wire[_TARGET_FIELD[self.target]] = self.operand
        return wire

    # -- builders: Compare.value("k") == b"v" ------------------------------------------
    @staticmethod
    def value(key: Any, range_end: Any = None, *, prefix: bool = False) -> "CompareTarget":
        """Compare the key's value: ``Compare.value("k") == b"v"``."""
        return CompareTarget("VALUE", key, range_end, prefix)

    @staticmethod
    def version(key: Any, range_end: Any = None, *, prefix: bool = False) -> "CompareTarget":
        """Compare the key's version (puts since its creation; 0 = absent)."""
        return CompareTarget("VERSION", key, range_end, prefix)

    @staticmethod
    def create_revision(key: Any, range_end: Any = None, *, prefix: bool = False) -> "CompareTarget":
        """Compare the revision that created the key (0 = absent)."""
        return CompareTarget("CREATE", key, range_end, prefix)

    @staticmethod
    def mod_revision(key: Any, range_end: Any = None, *, prefix: bool = False) -> "CompareTarget":
        """Compare the revision of the key's last change (compare-and-set on a read)."""
        return CompareTarget("MOD", key, range_end, prefix)

    @staticmethod
    def lease(key: Any, range_end: Any = None, *, prefix: bool = False) -> "CompareTarget":
        """Compare the id of the lease the key is attached to (0 = none)."""
        return CompareTarget("LEASE", key, range_end, prefix)


class CompareTarget:
    """The left-hand side of a comparison; an operator makes the ``Compare``."""

    __slots__ = ("target", "key", "range_end")
    __hash__ = None  # type: ignore[assignment]  # == builds a Compare, not a bool

    def __init__(self, target: str, key: Any, range_end: Any = None, prefix: bool = False) -> None:
        self.target = target
        self.key, self.range_end = key_range(key, range_end, prefix=prefix)

    def _make(self, result: str, operand: Any) -> Compare:
        if self.target == "VALUE":
            operand = to_bytes(operand, "value")
        else:
            if isinstance(operand, bool) or not isinstance(operand, int):
                raise TypeError(f"{self.target} compares need an int, not {type(operand).__name__}")
        return Compare(self.target, result, self.key, operand, self.range_end)

    def __eq__(self, other: Any) -> Compare:  # type: ignore[override]
        return self._make("EQUAL", other)

    def __ne__(self, other: Any) -> Compare:  # type: ignore[override]
        return self._make("NOT_EQUAL", other)

    def __gt__(self, other: Any) -> Compare:
        return self._make("GREATER", other)

    def __lt__(self, other: Any) -> Compare:
        return self._make("LESS", other)


_SORT_ORDERS = ("NONE", "ASCEND", "DESCEND")
_SORT_TARGETS = {"KEY": "KEY", "VERSION": "VERSION", "CREATE": "CREATE", "MOD": "MOD",
                 "MODIFY": "MOD", "VALUE": "VALUE"}


def range_fields(key: Any, range_end: Any = None, *, prefix: bool = False, from_key: bool = False,
                 limit: int = 0, revision: int = 0, sort_order: str = "NONE",
                 sort_target: str = "KEY", serializable: bool = False, keys_only: bool = False,
                 count_only: bool = False, min_mod_revision: int = 0, max_mod_revision: int = 0,
                 min_create_revision: int = 0, max_create_revision: int = 0) -> dict[str, Any]:
    """The fields of a ``range`` request (defaults left out: absent means default)."""
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    order = str(sort_order or "NONE").upper()
    target = _SORT_TARGETS.get(str(sort_target or "KEY").upper())
    if order not in _SORT_ORDERS:
        raise ValueError(f"bad sort order {sort_order!r}: NONE, ASCEND or DESCEND")
    if target is None:
        raise ValueError(f"bad sort target {sort_target!r}: KEY, VERSION, CREATE, MOD or VALUE")
    f: dict[str, Any] = {"key": k}
    if end:
        f["range_end"] = end
    for name, val in (("limit", limit), ("revision", revision),
                      ("min_mod_revision", min_mod_revision), ("max_mod_revision", max_mod_revision),
                      ("min_create_revision", min_create_revision),
                      ("max_create_revision", max_create_revision)):
        if val:
            f[name] = int(val)
    if order != "NONE":
        f["sort_order"] = order
    if target != "KEY":
        f["sort_target"] = target
    for name, flag in (("serializable", serializable), ("keys_only", keys_only),
                       ("count_only", count_only)):
        if flag:
            f[name] = True
    return f


def put_fields(key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
               ignore_value: bool = False, ignore_lease: bool = False) -> dict[str, Any]:
    f: dict[str, Any] = {"key": to_bytes(key), "value": to_bytes(value, "value")}
    if lease:
        f["lease"] = int(lease)
    for name, flag in (("prev_kv", prev_kv), ("ignore_value", ignore_value),
                       ("ignore_lease", ignore_lease)):
        if flag:
            f[name] = True
    return f


def delete_fields(key: Any, range_end: Any = None, *, prefix: bool = False,
                  from_key: bool = False, prev_kv: bool = False) -> dict[str, Any]:
    k, end = key_range(key, range_end, prefix=prefix, from_key=from_key)
    f: dict[str, Any] = {"key": k}
    if end:
        f["range_end"] = end
    if prev_kv:
        f["prev_kv"] = True
    return f


def txn_fields(compare: Iterable[Compare] = (), success: Iterable["Op"] = (),
               failure: Iterable["Op"] = ()) -> dict[str, Any]:
    return {
        "compare": [_compare_wire(c) for c in compare],
        "success": [_op_wire(o) for o in success],
        "failure": [_op_wire(o) for o in failure],
    }


def _compare_wire(c: Any) -> dict[str, Any]:
    if isinstance(c, Compare):
        return c.to_wire()
    if isinstance(c, dict):
        return c
    raise TypeError(f"a txn compare must be a Compare, not {type(c).__name__} "
                    "(did you compare a CompareTarget with an unsupported operator?)")


def _op_wire(o: Any) -> dict[str, Any]:
    if isinstance(o, Op):
        return o.to_wire()
    if isinstance(o, dict):
        return o
    raise TypeError(f"a txn operation must be an Op, not {type(o).__name__}")


@dataclass(frozen=True, slots=True)
class Op:
    """One RequestOp of a txn: ``kind`` is ``range``, ``put``, ``delete_range`` or ``txn``."""

    kind: str
    fields: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        """The RequestOp map of SPEC section 3 (``txn``)."""
        return {self.kind: self.fields}

    @property
    def is_write(self) -> bool:
        return wire_op_writes(self.to_wire())

    @staticmethod
    def get(key: Any, range_end: Any = None, **kwargs: Any) -> "Op":
        """A range read; the keyword arguments are ``Client.get``'s."""
        return Op("range", range_fields(key, range_end, **kwargs))

    range = get

    @staticmethod
    def put(key: Any, value: Any = b"", lease: int = 0, prev_kv: bool = False,
            ignore_value: bool = False, ignore_lease: bool = False) -> "Op":
        """A put; the arguments are ``Client.put``'s."""
        return Op("put", put_fields(key, value, lease, prev_kv, ignore_value, ignore_lease))

    @staticmethod
    def delete(key: Any, range_end: Any = None, *, prefix: bool = False, from_key: bool = False,
               prev_kv: bool = False) -> "Op":
        """A delete of a key, a prefix or a range; the arguments are ``Client.delete``'s."""
        return Op("delete_range", delete_fields(key, range_end, prefix=prefix,
                                                from_key=from_key, prev_kv=prev_kv))

    @staticmethod
    def txn(compare: Iterable[Compare] = (), success: Iterable["Op"] = (),
            failure: Iterable["Op"] = ()) -> "Op":
        """A nested txn (its ops may not write a key another op of the txn writes)."""
        return Op("txn", txn_fields(compare, success, failure))


def wire_op_writes(op: Any) -> bool:
    """Whether a wire RequestOp (or txn fields) may change the store."""
    if not isinstance(op, dict):
        return True
    if "put" in op or "delete_range" in op:
        return True
    if "txn" in op:
        return txn_writes(op["txn"])
    return "range" not in op


def txn_writes(fields: Any) -> bool:
    if not isinstance(fields, dict):
        return True
    return any(wire_op_writes(o) for branch in ("success", "failure")
               for o in (fields.get(branch) or ()))


class Txn:
    """Fluent builder: ``client.txn().if_(...).then(...).else_(...).commit()``."""

    def __init__(self, client: "Client | None" = None) -> None:
        self._client = client
        self.compare: list[Compare] = []
        self.success: list[Op] = []
        self.failure: list[Op] = []

    def if_(self, *compares: Compare) -> "Txn":
        """Add comparisons; all must hold for ``then``'s ops to run."""
        self.compare.extend(compares)
        return self

    def then(self, *ops: Op) -> "Txn":
        """Ops run when every comparison holds."""
        self.success.extend(ops)
        return self

    def else_(self, *ops: Op) -> "Txn":
        """Ops run when a comparison fails."""
        self.failure.extend(ops)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The txn request's fields (compare, success, failure)."""
        return txn_fields(self.compare, self.success, self.failure)

    def commit(self) -> "TxnResponse":
        """Run it through the client that built it: a ``TxnResponse`` (on an
        ``AsyncClient``, an awaitable of it: ``await c.txn().if_(...).commit()``)."""
        if self._client is None:
            raise RuntimeError("this Txn is not bound to a client")
        return self._client.txn(self.compare, self.success, self.failure)
