"""Generate protocol/client/API.md, the client library's API reference, from the
docstrings and signatures of its public classes. tests/unit/test_apiref.py fails when the
committed page differs from what this prints, so the page cannot go stale: after changing
a public signature or docstring, run

    .venv/bin/python tests/apiref.py --write
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "protocol" / "client" / "API.md"

# (module, class names) in the order the page shows them: the threaded class, then its
# asyncio twin.
SECTIONS: list[tuple[str, list[tuple[str, str]]]] = [
    ("Clients", [("protocol.client.client", "Client"), ("protocol.client.aio", "AsyncClient")]),
    ("Transactions", [("protocol.client.txn", "Txn"), ("protocol.client.txn", "Compare"),
                      ("protocol.client.txn", "Op")]),
    ("Watch", [("protocol.client.watch", "Watcher"), ("protocol.client.aio_watch", "AsyncWatcher"),
               ("protocol.client.watch", "WatchResponse"), ("protocol.client.watch", "Event")]),
    ("Leases", [("protocol.client.lease", "Lease"), ("protocol.client.aio_lease", "AsyncLease")]),
    ("Sessions, locks and elections", [
        ("protocol.client.concurrency", "Session"), ("protocol.client.aio_concurrency", "AsyncSession"),
        ("protocol.client.concurrency", "Lock"), ("protocol.client.aio_concurrency", "AsyncLock"),
        ("protocol.client.concurrency", "Election"), ("protocol.client.aio_concurrency", "AsyncElection"),
        ("protocol.client.concurrency", "Observer"), ("protocol.client.aio_concurrency", "AsyncObserver")]),
    ("Security and auth", [("protocol.client.auth", "Auth")]),
]


# Public instance attributes (set in __init__, so not found by inspection), per class.
_CLIENT_ATTRIBUTES = [
    ("endpoints", "list[str]", "the current endpoint list (replaced as a whole by ``sync()`` and auto-sync)"),
    ("timeout", "float", "the default deadline of a call, in seconds"),
    ("requests_sent", "int", "frames this client has sent to any server (a plain counter)"),
]
ATTRIBUTES: dict[str, list[tuple[str, str, str]]] = {
    "Client": _CLIENT_ATTRIBUTES, "AsyncClient": _CLIENT_ATTRIBUTES,
}


def _doc(obj: Any) -> str:
    doc = inspect.getdoc(obj)
    return doc.strip() if doc else ""


def _annotation(a: Any) -> str:
    return a if isinstance(a, str) else inspect.formatannotation(a)


def _signature(name: str, fn: Any) -> str:
    """``name(params) -> result`` with string annotations unquoted and private
    parameters (``_security``) left out."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return f"{name}(...)"
    parts: list[str] = []
    star_done = False
    for p in sig.parameters.values():
        if p.name in ("self", "cls") or p.name.startswith("_"):
            continue
        if p.kind is p.KEYWORD_ONLY and not star_done:
            parts.append("*")
            star_done = True
        if p.kind is p.VAR_POSITIONAL:
            star_done = True
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        text = prefix + p.name
        if p.annotation is not p.empty:
            text += f": {_annotation(p.annotation)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}" if p.annotation is not p.empty else f"={p.default!r}"
        parts.append(text)
    result = ""
    if sig.return_annotation is not sig.empty and _annotation(sig.return_annotation) != "None":
        result = f" -> {_annotation(sig.return_annotation)}"
    return f"{name}({', '.join(parts)}){result}"


def _members(cls: type) -> list[tuple[str, Any]]:
    """Public methods and properties, defined on the class or a base of ours, in
    definition order."""
    seen: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not klass.__module__.startswith("protocol."):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_"):
                continue
            seen[name] = value
    return list(seen.items())


def _class_section(module: str, name: str) -> list[str]:
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return []
    out = [f"### {name}", "", f"`{module}.{name}`", "", "```python",
           _signature(name, cls.__init__ if "__init__" in vars(cls) else cls), "```", ""]
    doc = _doc(cls)
    if doc:
        out += [doc, ""]
    for aname, atype, adoc in ATTRIBUTES.get(name, []):
        out.append(f"- **`{aname}: {atype}`** (attribute): {adoc}")
    names_of: dict[int, str] = {}
    for mname, value in _members(cls):
        if isinstance(value, property):
            out += [f"- **`{mname}`** (property)" + (f": {_first_para(_doc(value))}" if _doc(value) else "")]
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if not callable(value):
            continue
        if id(value) in names_of:
            out.append(f"- **`{mname}`**: the same as `{names_of[id(value)]}`")
            continue
        names_of[id(value)] = mname
        kind = "async " if inspect.iscoroutinefunction(value) or inspect.isasyncgenfunction(value) else ""
        line = f"- **`{kind}{_signature(mname, value)}`**"
        doc = _doc(value)
        out.append(line + (f"  \n  {_indent(doc)}" if doc else ""))
    out.append("")
    return out


def _first_para(doc: str) -> str:
    return doc.split("\n\n")[0].replace("\n", " ")


def _indent(doc: str) -> str:
    return doc.replace("\n", "\n  ")


def render() -> str:
    lines = ["# protocol.client API reference", "",
             "Generated from the docstrings by `tests/apiref.py` (do not edit by hand: run",
             "`.venv/bin/python tests/apiref.py --write`; tests/unit/test_apiref.py fails when this",
             "page is out of date). README's \"From Python\" shows the library in use; the",
             "asyncio classes take the same arguments as the threaded ones, and their methods",
             "that talk to the server are `async def` with the same names and results.", ""]
    for title, classes in SECTIONS:
        body: list[str] = []
        for module, name in classes:
            body += _class_section(module, name)
        if body:
            lines += [f"## {title}", ""] + body
    text = "\n".join(lines).rstrip("\n") + "\n"
    return "\n".join(line.rstrip() for line in text.split("\n"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--write", action="store_true", help=f"write {PAGE.relative_to(ROOT)}")
    args = ap.parse_args()
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    text = render()
    if args.write:
        PAGE.write_text(text)
        print(f"wrote {PAGE.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
