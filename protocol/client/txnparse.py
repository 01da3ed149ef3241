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
Nothing here performs I/O except reading the lines it is handed.
"""
from __future__ import annotations

import re
from typing import Callable, Iterable, Iterator, TextIO

from protocol.client.txn import Compare, CompareTarget, Op


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
    return getattr(lhs, _OPS[op])(operand)


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
    return s.encode("utf-8", "surrogateescape")


def get_op(args: list[str]) -> Op:
    pos, f = _parse_flags("get", args)
    if not pos or len(pos) > 2:
        raise TxnParseError("get command needs one argument as key and an optional argument "
                            "as range_end", 128)
    prefix, from_key = bool(f.get("prefix")), bool(f.get("from-key"))
    if prefix and from_key:
        raise TxnParseError("`--prefix` and `--from-key` cannot be set at the same time, "
                            "choose one", 128)
    if len(pos) > 1 and (prefix or from_key):
        raise TxnParseError("too many arguments, only accept one argument when `--prefix` or "
                            "`--from-key` is set", 128)
    consistency = f.get("consistency", "l")
    if consistency not in ("l", "s"):
        raise TxnParseError(f'unknown consistency flag "{consistency}"', 4)
    order, target = sort_options(str(f.get("order", "")), str(f.get("sort-by", "")))
    return Op.get(_b(pos[0]), _b(pos[1]) if len(pos) > 1 else None, prefix=prefix,
                  from_key=from_key, limit=max(0, int(f.get("limit", 0))),  # type: ignore[arg-type]
                  revision=max(0, int(f.get("rev", 0))), sort_order=order,  # type: ignore[arg-type]
                  sort_target=target, serializable=consistency == "s",
                  keys_only=bool(f.get("keys-only")), count_only=bool(f.get("count-only")))


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


def put_op(args: list[str]) -> Op:
    pos, f = _parse_flags("put", args)
    ignore_value = bool(f.get("ignore-value"))
    if not pos:
        raise TxnParseError("put command needs 1 argument and input from stdin or 2 arguments", 128)
    if ignore_value and len(pos) > 1:
        raise TxnParseError("put command needs only 1 argument when 'ignore-value' is set", 128)
    if not ignore_value and len(pos) < 2:
        raise TxnParseError("put command needs 1 argument and input from stdin or 2 arguments", 128)
    return Op.put(_b(pos[0]), _b(pos[1]) if len(pos) > 1 else b"",
                  lease=parse_lease(str(f.get("lease", "0"))), prev_kv=bool(f.get("prev-kv")),
                  ignore_value=ignore_value, ignore_lease=bool(f.get("ignore-lease")))


def del_op(args: list[str]) -> Op:
    pos, f = _parse_flags("del", args)
    if not pos or len(pos) > 2:
        raise TxnParseError("del command needs one argument as key and an optional argument "
                            "as range_end", 128)
    prefix, from_key = bool(f.get("prefix")), bool(f.get("from-key"))
    if prefix and from_key:
        raise TxnParseError("`--prefix` and `--from-key` cannot be set at the same time, "
                            "choose one", 128)
    if len(pos) > 1 and (prefix or from_key):
        raise TxnParseError("too many arguments, only accept one argument when `--prefix` or "
                            "`--from-key` is set", 128)
    return Op.delete(_b(pos[0]), _b(pos[1]) if len(pos) > 1 else None, prefix=prefix,
                     from_key=from_key, prev_kv=bool(f.get("prev-kv")))


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
