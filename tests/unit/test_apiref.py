"""protocol/client/API.md is generated from the docstrings (tests/apiref.py): it must be
what the generator prints now, so that it cannot go stale."""
from __future__ import annotations

import asyncio
import importlib

from tests import apiref


def test_every_documented_class_exists():
    for _, classes in apiref.SECTIONS:
        for module, name in classes:
            assert hasattr(importlib.import_module(module), name), f"{module}.{name}"


def test_the_committed_api_reference_is_up_to_date():
    assert apiref.PAGE.read_text() == apiref.render(), (
        "protocol/client/API.md is out of date: run .venv/bin/python tests/apiref.py --write")


def test_every_public_method_has_a_docstring():
    missing = []
    for _, classes in apiref.SECTIONS:
        for module, name in classes:
            cls = getattr(importlib.import_module(module), name)
            for mname, value in apiref._members(cls):
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                if callable(value) and not (value.__doc__ or "").strip():
                    missing.append(f"{name}.{mname}")
    assert not missing, f"public methods without a docstring: {missing}"


def test_the_listed_attributes_exist():
    from protocol.client import Client
    from protocol.client.aio import AsyncClient

    for cls in (Client, AsyncClient):
        c = cls(["tcp://127.0.0.1:1"])
        for name, _, _ in apiref.ATTRIBUTES[cls.__name__]:
            assert hasattr(c, name), f"{cls.__name__}.{name}"
        closing = c.close()
        if closing is not None:  # AsyncClient's is a coroutine
            asyncio.run(closing)
