"""etcdctl's ``txn`` input syntax, parsed into ``Compare`` and ``Op`` values.

    mod("key1") > "0"          compares, one per line, then a blank line
    value("k") = "v"
                                (blank)
    put k v --prev-kv          success requests: get, put, del with their flags
    get k --prefix
                                (blank)
    del k                      failure requests, until a blank line or end of input

Compare targets: ``ver``/``version``, ``c``/``create``, ``m``/``mod``, ``val``/``value``,
``lease`` (hex id); results ``=``, ``!=``, ``>``, ``<``. Operands are Go-quoted strings.
The get/del/put argument checks live here once (``parse_get``, ``parse_del``,
``check_put_args``): ``qkvctl get``/``del``/``put`` and the txn request lines both use them.
Nothing here performs I/O except reading the lines it is handed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Sequence, TextIO, TypedDict

from protocol.client.txn import Compare, CompareTarget, Op

if TYPE_CHECKING:
    from protocol.client.client import Client
    from protocol.client.types import DeleteRangeResponse, RangeResponse


class TxnParseError(Exception):
    """Bad txn input. ``exit_code`` follows etcdctl: 3 (invalid input) or 128 (bad args)."""

    def __init__(self, message: str, exit_code: int = 3) -> None:
        super().__init__(message)
        self.exit_code = exit_code


_ESCAPES = {"a": 7, "b": 8, "f": 12, "n": 10, "r": 13, "t": 9, "v": 11, "\\": 92, "'": 39, '"': 34}


def parse_go_string(s: str, pos: int = 0) -> tuple[bytes, int]:
    """Parse a Go string literal (``"..."`` with escapes, or a backquoted raw string) at
    ``pos``; return its bytes and the index after it."""
    if pos >= len(s):
        raise ValueError("expected a quoted string")
    if s[pos] == "`":
        end = s.find("`", pos + 1)
        if end < 0:
            raise ValueError("unterminated raw string")
        return s[pos + 1:end].encode(), end + 1
    if s[pos] != '"':
        raise ValueError("expected a quoted string")
    out = bytearray()
    i = pos + 1
    while i < len(s):
        c = s[i]
        if c == '"':
            return bytes(out), i + 1
        if c == "\n":
            break
        if c != "\\":
            out += c.encode()
            i += 1
            continue
        i += 1
        if i >= len(s):
            break
        e = s[i]
        if e in _ESCAPES:
            out.append(_ESCAPES[e])
            i += 1
        elif e == "x":
            out.append(int(s[i + 1:i + 3], 16))
            i += 3
        elif e in "01234567":
            out.append(int(s[i:i + 3], 8))
            i += 3
        elif e in "uU":
            n = 4 if e == "u" else 8
            out += chr(int(s[i + 1:i + 1 + n], 16)).encode()
            i += 1 + n
        else:
            raise ValueError(f"invalid escape \\{e}")
    raise ValueError("unterminated quoted string")


_ARG_RE = re.compile(r""""(?:[^"\\]|\\.)*"|'[^']*'|[^'"\s]\S*[^'"\s]?""")


def argify(line: str) -> list[str]:
    """etcdctl's ``Argify``: split a line into arguments, honouring quotes."""
    args = []
    for a in _ARG_RE.findall(line):
        if a.startswith("'"):
            a = a[1:-1]
        elif a.startswith('"'):
            try:
                a = parse_go_string(a)[0].decode("utf-8", "surrogateescape")
            except ValueError as exc:
                raise TxnParseError(str(exc)) from None
        args.append(a)
    return args


_TARGETS: dict[str, Callable[..., CompareTarget]] = {
    "ver": Compare.version, "version": Compare.version,
    "c": Compare.create_revision, "create": Compare.create_revision,
    "m": Compare.mod_revision, "mod": Compare.mod_revision,
    "val": Compare.value, "value": Compare.value,
    "lease": Compare.lease,
}
_OPS = {"=": "__eq__", "!=": "__ne__", ">": "__gt__", "<": "__lt__"}


def parse_compare(line: str) -> Compare:
    """``target("key") op "value"``, as etcdctl's ``parseCompare``."""
    target, paren, rest = line.partition("(")
    if not paren:
        raise TxnParseError(f"malformed comparison: {line}")
    target = target.strip()
    try:
        key, i = parse_go_string(rest, 0)
        if not rest[i:].startswith(")"):
            raise ValueError("expected )")
        m = re.match(r"\)\s+(\S+)\s+", rest[i:])
        if not m:
            raise ValueError("expected an operator")
        op = m.group(1)
        val, j = parse_go_string(rest, i + m.end())
    except ValueError as exc:
        raise TxnParseError(f"malformed comparison: {line} ({exc})") from None
    if rest[j:].strip():
        raise TxnParseError(f"malformed comparison: {line} (trailing input)")
    make = _TARGETS.get(target)
    if make is None:
        raise TxnParseError(f"malformed comparison: {line} (unknown target {target})")
    if op not in _OPS:
        raise TxnParseError(f"malformed comparison: {line} (unknown result op {op})")
    lhs = make(key)
    if target in ("val", "value"):
        operand: object = val
    else:
        try:
            operand = int(val.decode(), 16 if target == "lease" else 10)
        except ValueError:
            raise TxnParseError(f"invalid txn compare request: {line}") from None
    compare: Compare = getattr(lhs, _OPS[op])(operand)
    return compare


# -- request lines: a small flag parser with etcdctl's get/put/del flags ------------------
_BOOL, _INT, _STR = "bool", "int", "str"
_FLAGS = {
    "get": {"prefix": _BOOL, "from-key": _BOOL, "keys-only": _BOOL, "count-only": _BOOL,
            "print-value-only": _BOOL, "limit": _INT, "rev": _INT, "sort-by": _STR,
            "order": _STR, "consistency": _STR},
    "put": {"prev-kv": _BOOL, "ignore-value": _BOOL, "ignore-lease": _BOOL, "lease": _STR},
    "del": {"prefix": _BOOL, "from-key": _BOOL, "prev-kv": _BOOL},
}


def _parse_flags(cmd: str, args: list[str]) -> tuple[list[str], dict[str, object]]:
    spec = _FLAGS[cmd]
    pos: list[str] = []
    flags: dict[str, object] = {}
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            pos.extend(args[i:])
            break
        if not a.startswith("--") or len(a) == 2:
            pos.append(a)
            continue
        name, eq, val = a[2:].partition("=")
        kind = spec.get(name)
        if kind is None:
            raise TxnParseError(f"unknown flag: --{name}", 1)
        if kind == _BOOL:
            flags[name] = (val.lower() in ("1", "t", "true")) if eq else True
            continue
        if not eq:
            if i >= len(args):
                raise TxnParseError(f"flag needs an argument: --{name}", 1)
            val = args[i]
            i += 1
        if kind == _INT:
            try:
                flags[name] = int(val)
            except ValueError:
                raise TxnParseError(f'invalid argument "{val}" for "--{name}" flag', 1) from None
        else:
            flags[name] = val
    return pos, flags


def _b(s: str) -> bytes:
    """An argument as the bytes the user typed (os.fsencode's rule on POSIX)."""
    return s.encode("utf-8", "surrogateescape")


def sort_options(order: str, sort_by: str) -> tuple[str, str]:
    """etcdctl's --order/--sort-by, with clientv3's rule that (KEY, ASCEND) is sent as
    NONE (the server's natural order)."""
    o = order.upper()
    if o not in ("", "ASCEND", "DESCEND"):
        raise TxnParseError(f"bad sort order {order}", 4)
    t = sort_by.upper()
    targets = {"": "KEY", "KEY": "KEY", "CREATE": "CREATE", "MODIFY": "MOD", "VALUE": "VALUE",
               "VERSION": "VERSION"}
    if t not in targets:
        raise TxnParseError(f"bad sort target {sort_by}", 4)
    target = targets[t]
    order_out = o or "NONE"
    if target == "KEY" and order_out == "ASCEND":
        order_out = "NONE"
    return order_out, target


def parse_lease(s: str) -> int:
    try:
        return int(s, 16)
    except ValueError:
        raise TxnParseError(f'bad lease ID (strconv.ParseInt: parsing "{s}": invalid syntax), '
                            "expecting ID in Hex", 128) from None


# -- get/del/put: one parser each, shared by the qkvctl commands and the txn lines ----------
# (etcdctl runs the same command definitions for a txn op line: txn_command.go).
def key_range_args(args: Sequence[str], prefix: bool, from_key: bool, what: str) -> tuple[bytes, bytes | None]:
    """The key and optional range_end of ``get``/``del``: one key, a second argument only
    without --prefix/--from-key, and not both flags (etcdctl's getGetOp/getDelOp)."""
    if not args or len(args) > 2:
        raise TxnParseError(f"{what} command needs one argument as key and an optional argument "
                            "as range_end", 128)
    if prefix and from_key:
        raise TxnParseError("`--prefix` and `--from-key` cannot be set at the same time, "
                            "choose one", 128)
    if len(args) > 1 and (prefix or from_key):
        raise TxnParseError("too many arguments, only accept one argument when `--prefix` or "
                            "`--from-key` is set", 128)
    return _b(args[0]), (_b(args[1]) if len(args) > 1 else None)


class RangeOptions(TypedDict):
    """The flags of a checked ``get``, as ``Client.get`` and ``Op.get`` take them."""

    prefix: bool
    from_key: bool
    limit: int
    revision: int
    sort_order: str
    sort_target: str
    serializable: bool
    keys_only: bool
    count_only: bool


@dataclass(frozen=True)
class GetRequest:
    """A checked ``get``: run it (``qkvctl get``) or make it a txn ``Op``."""

    key: bytes
    range_end: bytes | None
    options: RangeOptions

    def op(self) -> Op:
        return Op.get(self.key, self.range_end, **self.options)

    def run(self, client: Client) -> RangeResponse:
        return client.get(self.key, self.range_end, **self.options)


def parse_get(args: Sequence[str], *, prefix: bool = False, from_key: bool = False,
              consistency: str = "l", order: str = "", sort_by: str = "", limit: int = 0,
              rev: int = 0, keys_only: bool = False, count_only: bool = False) -> GetRequest:
    """``get <key> [range_end]`` with etcdctl's flags, checked (TxnParseError: 128 for bad
    arguments, 4 for an unknown consistency, order or sort target)."""
    key, range_end = key_range_args(args, prefix, from_key, "get")
    if consistency not in ("l", "s"):
        raise TxnParseError(f'unknown consistency flag "{consistency}"', 4)
    sort_order, sort_target = sort_options(order, sort_by)
    return GetRequest(key, range_end, RangeOptions(
        prefix=prefix, from_key=from_key, limit=max(0, limit), revision=max(0, rev), sort_order=sort_order,
        sort_target=sort_target, serializable=consistency == "s", keys_only=keys_only, count_only=count_only))


class DeleteOptions(TypedDict):
    """The flags of a checked ``del``, as ``Client.delete`` and ``Op.delete`` take them."""

    prefix: bool
    from_key: bool
    prev_kv: bool


@dataclass(frozen=True)
class DeleteRequest:
    """A checked ``del``: run it (``qkvctl del``) or make it a txn ``Op``."""

    key: bytes
    range_end: bytes | None
    options: DeleteOptions

    def op(self) -> Op:
        return Op.delete(self.key, self.range_end, **self.options)

    def run(self, client: Client) -> DeleteRangeResponse:
        return client.delete(self.key, self.range_end, **self.options)


def parse_del(args: Sequence[str], *, prefix: bool = False, from_key: bool = False,
              prev_kv: bool = False) -> DeleteRequest:
    """``del <key> [range_end]`` with etcdctl's flags, checked."""
    key, range_end = key_range_args(args, prefix, from_key, "del")
    return DeleteRequest(key, range_end, DeleteOptions(prefix=prefix, from_key=from_key, prev_kv=prev_kv))


def check_put_args(n_args: int, ignore_value: bool) -> None:
    """``put <key> [value]``: a value unless --ignore-value, and none with it (the command
    line may take the value from stdin: it counts as the second argument)."""
    if n_args < 1:
        raise TxnParseError("put command needs 1 argument and input from stdin or 2 arguments", 128)
    if ignore_value and n_args > 1:
        raise TxnParseError("put command needs only 1 argument when 'ignore-value' is set", 128)
    if not ignore_value and n_args < 2:
        raise TxnParseError("put command needs 1 argument and input from stdin or 2 arguments", 128)


def _flag_bool(f: dict[str, object], name: str) -> bool:
    return bool(f.get(name))


def _flag_int(f: dict[str, object], name: str) -> int:
    v = f.get(name, 0)
    return v if isinstance(v, int) else 0


def _flag_str(f: dict[str, object], name: str, default: str = "") -> str:
    v = f.get(name, default)
    return v if isinstance(v, str) else default


def get_op(args: list[str]) -> Op:
    """A txn line's ``get ...`` (after the command word)."""
    pos, f = _parse_flags("get", args)
    return parse_get(pos, prefix=_flag_bool(f, "prefix"), from_key=_flag_bool(f, "from-key"),
                     consistency=_flag_str(f, "consistency", "l"), order=_flag_str(f, "order"),
                     sort_by=_flag_str(f, "sort-by"), limit=_flag_int(f, "limit"),
                     rev=_flag_int(f, "rev"), keys_only=_flag_bool(f, "keys-only"),
                     count_only=_flag_bool(f, "count-only")).op()


def put_op(args: list[str]) -> Op:
    """A txn line's ``put ...``."""
    pos, f = _parse_flags("put", args)
    ignore_value = _flag_bool(f, "ignore-value")
    check_put_args(len(pos), ignore_value)
    return Op.put(_b(pos[0]), _b(pos[1]) if len(pos) > 1 else b"",
                  lease=parse_lease(_flag_str(f, "lease", "0")), prev_kv=_flag_bool(f, "prev-kv"),
                  ignore_value=ignore_value, ignore_lease=_flag_bool(f, "ignore-lease"))


def del_op(args: list[str]) -> Op:
    """A txn line's ``del ...``."""
    pos, f = _parse_flags("del", args)
    return parse_del(pos, prefix=_flag_bool(f, "prefix"), from_key=_flag_bool(f, "from-key"),
                     prev_kv=_flag_bool(f, "prev-kv")).op()


def parse_request(line: str) -> Op:
    args = argify(line)
    if not args:
        raise TxnParseError(f"invalid txn request: {line}")
    cmd, rest = args[0], args[1:]
    if cmd == "get":
        return get_op(rest)
    if cmd == "put":
        return put_op(rest)
    if cmd in ("del", "delete"):
        return del_op(rest)
    raise TxnParseError(f"invalid txn request: {line}")


def _sections(lines: Iterator[str], prompt: Callable[[str], None] | None) -> Iterator[list[str]]:
    titles = ("compares:", "success requests (get, put, del):",
              "failure requests (get, put, del):")
    for title in titles:
        if prompt is not None:
            prompt(title)
        section: list[str] = []
        for raw in lines:
            line = raw.rstrip("\r\n")
            if not line.strip():
                break
            section.append(line)
        yield section


def parse_txn(lines: Iterable[str] | TextIO,
              prompt: Callable[[str], None] | None = None) -> tuple[list[Compare], list[Op], list[Op]]:
    """Read the three sections (each ends at a blank line or the end of input)."""
    it = iter(lines)
    compares_l, success_l, failure_l = _sections(it, prompt)
    # Sections are consumed one after the other so prompts interleave with reading.
    compares = [parse_compare(line.strip()) for line in compares_l]
    success = [parse_request(line) for line in success_l]
    failure = [parse_request(line) for line in failure_l]
    return compares, success, failure
