"""Schema nodes of the internal messages: each checks a msgpack value and returns it typed.

Rules:
- `check(v, path)` raises `Malformed` (with the path and the reason) unless `v` matches;
  `load(v, path)` checks and returns the value the receiver works with: a NamedTuple for a
  `Record` (an array whose positions are a NamedTuple's fields), the value itself for
  every other node (lists of records are lists of NamedTuples).
- A bool is never an int, integers are within their range, strings, bytes, lists and
  maps are bounded; a map's other keys are refused unless the node says `extra`.
- The schema of a record's field lives in the field's annotation:
  `ctx_id: Annotated[int, ID]` (actors/runtime/messages.py). A field with a default may be
  absent at the end of the array. A record's `XOR` names two fields of which exactly one
  is None (a reply holds a result or an error, never both and never neither).
- `load` first runs a compiled fast path (`_Compiler`: the same checks as straight-line
  code, stricter on types: exact int/bytes/str/list/dict); anything it does not accept
  is checked again by the nodes themselves, which accept it or raise the named
  `Malformed`. So the fast path only ever saves time, never changes a verdict.
- Pure: no I/O.
"""
from __future__ import annotations

import typing
from typing import Any, Callable, Iterable

from actors.runtime.entry import InvalidEntry
from protocol.errors import Malformed

UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1
MAX_BATCH = 100_000  # elements of any batch list (proposals, reads, replies, entries, events)
MAX_LIST = 10_000  # other lists: URLs, members, alarms
MAX_STR = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024


# --- schema nodes ------------------------------------------------------------------------
class Schema:
    builds = False  # load returns a new value (a record, or values holding records)
    _fast: Callable[[Any], Any] | None = None  # the compiled load (module docstring)

    def check(self, v: Any, path: str) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def load(self, v: Any, path: str) -> Any:
        """`v` checked, as the receiver works with it (see Record)."""
        self.check(v, path)
        return v

    def fast_load(self, v: Any, path: str) -> Any:
        """`load`, through the compiled fast path first (the same verdict, sooner)."""
        fast = self._fast
        if fast is None:
            fast = self._fast = _Compiler().loader(self)
        try:
            return fast(v)
        except Exception:  # not accepted by the fast path: the nodes decide, naming the field
            return self.load(v, path)


def _fail(path: str, why: str) -> typing.NoReturn:
    raise Malformed(f"malformed internal message: {path}: {why}")


class Int(Schema):
    def __init__(self, lo: int = 0, hi: int = UINT64_MAX) -> None:
        self.lo, self.hi = lo, hi

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, int) or isinstance(v, bool):
            _fail(path, f"expected an integer, got {type(v).__name__}")
        if not self.lo <= v <= self.hi:
            _fail(path, f"integer out of range [{self.lo}, {self.hi}]")


class Num(Schema):
    """A non-negative number (int or float, never bool), finite."""

    def check(self, v: Any, path: str) -> None:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < float("inf"):
            _fail(path, "expected a non-negative number")


class Bool(Schema):
    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, bool):
            _fail(path, f"expected a bool, got {type(v).__name__}")


class Bytes(Schema):
    def __init__(self, max_len: int = MAX_BYTES) -> None:
        self.max_len = max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, bytes):
            _fail(path, f"expected bytes, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "bytes too long")


class Str(Schema):
    def __init__(self, max_len: int = MAX_STR, values: Iterable[str] | None = None) -> None:
        self.max_len = max_len
        self.values = frozenset(values) if values is not None else None

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, str):
            _fail(path, f"expected a string, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "string too long")
        if self.values is not None and v not in self.values:
            _fail(path, "unexpected value")


class Nullable(Schema):
    def __init__(self, inner: Schema) -> None:
        self.inner = inner
        self.builds = inner.builds

    def check(self, v: Any, path: str) -> None:
        if v is not None:
            self.inner.check(v, path)

    def load(self, v: Any, path: str) -> Any:
        return None if v is None else self.inner.load(v, path)


class Tup(Schema):
    """An array of fixed length, one schema per position."""

    def __init__(self, *items: Schema) -> None:
        self.items = items

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        if len(v) != len(self.items):
            _fail(path, f"expected {len(self.items)} elements, got {len(v)}")
        for i, (item, schema) in enumerate(zip(v, self.items)):
            schema.check(item, f"{path}[{i}]")


class ListOf(Schema):
    def __init__(self, item: Schema, max_len: int = MAX_BATCH, min_len: int = 0) -> None:
        self.item, self.max_len, self.min_len = item, max_len, min_len
        self.builds = item.builds

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        if not self.min_len <= len(v) <= self.max_len:
            _fail(path, f"array length {len(v)} out of [{self.min_len}, {self.max_len}]")
        check = self.item.check
        try:  # the fast pass names no position; a failure is checked again to name it
            for item in v:
                check(item, path)
        except Malformed:
            self._where(v, path)
            raise

    def _where(self, v: list[Any], path: str) -> None:
        """Raise the Malformed of the first bad element, with its index in the path."""
        for i, item in enumerate(v):
            self.item.check(item, f"{path}[{i}]")

    def load(self, v: Any, path: str) -> Any:
        if not self.builds:
            self.check(v, path)
            return v
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        if not self.min_len <= len(v) <= self.max_len:
            _fail(path, f"array length {len(v)} out of [{self.min_len}, {self.max_len}]")
        load = self.item.load
        try:
            return [load(item, path) for item in v]
        except Malformed:
            self._where(v, path)
            raise


class Map(Schema):
    """A map with string keys: `required` and `optional` fields with their schemas; other
    keys are refused unless `extra` (then their values are not looked at)."""

    def __init__(self, required: dict[str, Schema], optional: dict[str, Schema] | None = None,
                 extra: bool = False, max_len: int = 256) -> None:
        self.required, self.optional, self.extra, self.max_len = required, optional or {}, extra, max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, dict):
            _fail(path, f"expected a map, got {type(v).__name__}")
        if len(v) > self.max_len:
            _fail(path, "map too large")
        for k in v:
            if not isinstance(k, str):
                _fail(path, "map key is not a string")
            if not self.extra and k not in self.required and k not in self.optional:
                _fail(path, f"unknown field {k[:40]!r}")
        for k, schema in self.required.items():
            if k not in v:
                _fail(path, f"missing field {k!r}")
            schema.check(v[k], f"{path}.{k}")
        for k, schema in self.optional.items():
            if k in v:
                schema.check(v[k], f"{path}.{k}")


class Opaque(Schema):
    """A map or array whose content the receiver validates itself (the auth state wire,
    a Raft message): only its type and top-level length are checked here."""

    def __init__(self, kind: type, max_len: int = MAX_BATCH) -> None:
        self.kind, self.max_len = kind, max_len

    def check(self, v: Any, path: str) -> None:
        if not isinstance(v, self.kind):
            _fail(path, f"expected a {self.kind.__name__}, got {type(v).__name__}")
        if len(typing.cast(typing.Sized, v)) > self.max_len:
            _fail(path, "too large")


def AnyMap() -> Opaque:  # noqa: N802 - reads as a schema node
    return Opaque(dict)


class Func(Schema):
    """A check written as a function raising InvalidEntry (ops: entry_ops.py)."""

    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    def check(self, v: Any, path: str) -> None:
        try:
            self.fn(v)
        except InvalidEntry as exc:
            _fail(path, str(exc)[:200])


class AnyOf(Schema):
    """The first alternative that matches (each is tried whole)."""

    def __init__(self, *options: Schema) -> None:
        self.options = options

    def check(self, v: Any, path: str) -> None:
        first: Malformed | None = None
        for option in self.options:
            try:
                option.check(v, path)
                return
            except Malformed as exc:
                first = first or exc
        assert first is not None
        raise first


def _field_schemas(cls: type) -> dict[str, Schema]:
    """The schema in each field's `Annotated[type, schema]` annotation."""
    out: dict[str, Schema] = {}
    hints = typing.get_type_hints(cls, include_extras=True)
    for name in getattr(cls, "_fields", hints):  # a NamedTuple's fields, or a TypedDict's keys
        hint = hints[name]
        if typing.get_origin(hint) in (typing.NotRequired, typing.Required):
            hint = typing.get_args(hint)[0]
        meta = [m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Schema)]
        if len(meta) != 1:
            raise TypeError(f"{cls.__name__}.{name}: the annotation must be Annotated[type, schema]")
        out[name] = meta[0]
    return out


class Record(Schema):
    """An array whose positions are the fields of a NamedTuple `cls`, each with the schema
    of its annotation; `load` returns `cls(...)`. Trailing fields with defaults may be
    absent. `xor=(a, b)` (or `cls.XOR`): exactly one of fields a and b is None."""

    builds = True

    def __init__(self, cls: type, xor: tuple[str, str] | None = None) -> None:
        self.cls = cls
        schemas = _field_schemas(cls)
        names: tuple[str, ...] = cls._fields  # type: ignore[attr-defined]
        self.fields: list[tuple[str, Schema]] = [(name, schemas[name]) for name in names]
        self.schemas = [schema for _, schema in self.fields]
        self.any_builds = any(schema.builds for schema in self.schemas)
        defaults: dict[str, Any] = getattr(cls, "_field_defaults", {})
        self.defaults = [defaults[name] for name in names if name in defaults]
        self.min_len = len(self.fields) - len(self.defaults)
        xor = xor or getattr(cls, "XOR", None)
        self.xor = (names.index(xor[0]), names.index(xor[1])) if xor else None

    def check(self, v: Any, path: str) -> None:
        self.load(v, path)

    def load(self, v: Any, path: str) -> Any:
        if not isinstance(v, list):
            _fail(path, f"expected an array, got {type(v).__name__}")
        n = len(v)
        if not self.min_len <= n <= len(self.fields):
            want = str(len(self.fields)) if not self.defaults else f"{self.min_len}-{len(self.fields)}"
            _fail(path, f"expected {want} elements, got {n}")
        try:  # the fast pass names no field; a failure is checked again to name it
            if self.any_builds:
                out: list[Any] = []
                for item, schema in zip(v, self.schemas):
                    if schema.builds:
                        out.append(schema.load(item, path))
                    else:
                        schema.check(item, path)
                        out.append(item)
            else:
                for item, schema in zip(v, self.schemas):
                    schema.check(item, path)
                out = v
        except Malformed:
            for item, (name, schema) in zip(v, self.fields):
                schema.check(item, f"{path}.{name}")
            raise
        if n < len(self.fields):
            out.extend(self.defaults[n - self.min_len:])
        if self.xor and (out[self.xor[0]] is None) == (out[self.xor[1]] is None):
            _fail(path, "a reply must hold a result or an error")
        return tuple.__new__(self.cls, out)  # the length is checked: skip the generated __new__


def MapOf(cls: type, extra: bool = False) -> Map:  # noqa: N802 - reads as a schema node
    """The Map of a TypedDict `cls`: its required and NotRequired keys with the schemas of
    their `Annotated` annotations (the value stays a dict: its wire is a msgpack map)."""
    schemas = _field_schemas(cls)
    required: frozenset[str] = cls.__required_keys__  # type: ignore[attr-defined]
    return Map({k: s for k, s in schemas.items() if k in required},
               {k: s for k, s in schemas.items() if k not in required}, extra=extra)


# --- the compiled fast path ------------------------------------------------------------------
class _Bad(Exception):
    """The fast path does not accept a value (the nodes' own checks then decide)."""


def _bad() -> typing.NoReturn:
    raise _Bad


class _Compiler:
    """Straight-line Python for a schema tree: each building node (records, lists of
    them) becomes a function returning the loaded value or raising `_Bad`; each other
    node an expression that is True only when its `check` would pass. Nodes it does not
    know (Func, AnyOf, Tup, maps with `extra`) are called through their own `check`."""

    def __init__(self) -> None:
        self.env: dict[str, Any] = {"_bad": _bad, "_Bad": _Bad, "_new": tuple.__new__, "_inf": float("inf"),
                                    "_missing": _MISSING}
        self.lines: list[str] = []
        self.done: dict[int, str] = {}
        self.n = 0

    def _name(self, prefix: str, obj: Any = None) -> str:
        self.n += 1
        name = f"_{prefix}{self.n}"
        if obj is not None:
            self.env[name] = obj
        return name

    def loader(self, schema: Schema) -> Callable[[Any], Any]:
        if schema.builds:
            name = self.func(schema)
        else:
            name = self._name("top")
            self.lines += [f"def {name}(v):", f"    if not {self.pred(schema, 'v')}:", "        _bad()",
                           "    return v"]
        exec("\n".join(self.lines), self.env)  # noqa: S102 - code made here from the schema nodes
        fn: Callable[[Any], Any] = self.env[name]
        return fn

    def pred(self, node: Schema, x: str) -> str:
        """A boolean expression over the simple name or subscript `x` (no side effects)."""
        t = type(node)
        if t is Int:
            assert isinstance(node, Int)
            return f"(type({x}) is int and {node.lo} <= {x} <= {node.hi})"
        if t is Num:
            return f"(type({x}) in (int, float) and 0 <= {x} < _inf)"
        if t is Bool:
            return f"({x} is True or {x} is False)"
        if t is Bytes:
            assert isinstance(node, Bytes)
            return f"(type({x}) is bytes and len({x}) <= {node.max_len})"
        if t is Str:
            assert isinstance(node, Str)
            values = "" if node.values is None else f" and {x} in {self._name('vals', node.values)}"
            return f"(type({x}) is str and len({x}) <= {node.max_len}{values})"
        if t is Nullable and not node.builds:
            assert isinstance(node, Nullable)
            return f"({x} is None or {self.pred(node.inner, x)})"
        if t is Opaque:
            assert isinstance(node, Opaque)
            return f"(isinstance({x}, {self._name('kind', node.kind)}) and len({x}) <= {node.max_len})"
        # A function of its own. (A building node used as a predicate, a record inside a
        # map, counts as a failure when its value is falsy: the nodes' own checks decide.)
        return f"{self.func(node)}({x})"

    def func(self, node: Schema) -> str:
        """The name of a function for `node`: a predicate (non-building nodes) or a loader."""
        key = id(node)
        if key in self.done:
            return self.done[key]
        name = self._name("f")
        self.done[key] = name
        t = type(node)
        body: list[str]
        if t is Map and not typing.cast(Map, node).extra:
            assert isinstance(node, Map)
            allowed = self._name("keys", frozenset(node.required) | frozenset(node.optional))
            body = [f"if type(v) is not dict or len(v) > {node.max_len} or not v.keys() <= {allowed}:",
                    "    return False"]
            for k, sub in node.required.items():
                var = self._name("a")
                body += [f"{var} = v.get({k!r}, _missing)",
                         f"if {var} is _missing or not {self.pred(sub, var)}:", "    return False"]
            for k, sub in node.optional.items():
                var = self._name("a")
                body += [f"{var} = v.get({k!r}, _missing)",
                         f"if {var} is not _missing and not {self.pred(sub, var)}:", "    return False"]
            body.append("return True")
        elif t is ListOf and not node.builds:
            assert isinstance(node, ListOf)
            body = [f"if type(v) is not list or not {node.min_len} <= len(v) <= {node.max_len}:", "    return False",
                    "for x in v:", f"    if not {self.pred(node.item, 'x')}:", "        return False", "return True"]
        elif t is ListOf:
            assert isinstance(node, ListOf)
            item = self.func(node.item)
            body = [f"if type(v) is not list or not {node.min_len} <= len(v) <= {node.max_len}:", "    _bad()",
                    f"return [{item}(x) for x in v]"]
        elif t is Nullable and node.builds:
            assert isinstance(node, Nullable)
            body = [f"return None if v is None else {self.func(node.inner)}(v)"]
        elif t is Record:
            assert isinstance(node, Record)
            nf = len(node.fields)
            body = ["if type(v) is not list:", "    _bad()", "n = len(v)"]
            if node.defaults:
                defaults = self._name("defaults", node.defaults)
                body += [f"if n != {nf}:", f"    if not {node.min_len} <= n < {nf}:", "        _bad()",
                         f"    v = v + {defaults}[n - {node.min_len}:]"]
            else:
                body += [f"if n != {nf}:", "    _bad()"]
            checks = [self.pred(sub, f"v[{i}]") for i, sub in enumerate(node.schemas) if not sub.builds]
            if checks:
                body += [f"if not ({' and '.join(checks)}):", "    _bad()"]
            if node.any_builds:
                items = [f"{self.func(sub)}(v[{i}])" if sub.builds else f"v[{i}]" for i, sub in enumerate(node.schemas)]
                body.append(f"out = [{', '.join(items)}]")
            else:
                body.append("out = v")
            if node.xor:
                a, b = node.xor
                body += [f"if (out[{a}] is None) == (out[{b}] is None):", "    _bad()"]
            body.append(f"return _new({self._name('cls', node.cls)}, out)")
        else:  # a node checked by itself (Func, AnyOf, Tup, maps with extra keys)
            ref = self._name("node", node)
            if node.builds:
                body = ["try:", f"    return {ref}.load(v, '')", "except Malformed:", "    _bad()"]
            else:
                body = ["try:", f"    {ref}.check(v, '')", "except Malformed:", "    return False", "return True"]
            self.env["Malformed"] = Malformed
        self.lines.append(f"def {name}(v):")
        self.lines += ["    " + line for line in body]
        return name


_MISSING = object()
