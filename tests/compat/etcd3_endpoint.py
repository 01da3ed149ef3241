"""A pytest plugin loaded into python-etcd3 0.12.0's own test run (``-p etcd3_endpoint``,
tests/compat/run_etcd3_suite.py): it changes only how those tests find the server.

python-etcd3's tests/test_etcd3.py talks to one endpoint, named by
``PYTHON_ETCD_HTTP_URL`` (its fixture ``etcd`` and its ``etcdctl`` helper read it), but a
few of its fixtures and tests call ``etcd3.client()`` with no host (localhost:2379) or run
``etcdctl`` without ``--endpoints``. Here:

- ``etcd3.client``'s default host and port become those of ``PYTHON_ETCD_HTTP_URL`` (an
  explicit host or port is kept); ``etcdctl`` without ``--endpoints`` finds the same
  endpoint through the runner's ``etcdctl`` wrapper;
- Hypothesis's health checks are off: its ``@given`` tests take the function-scoped
  ``etcd`` fixture, which current Hypothesis refuses by default (the suite was written for
  Hypothesis 4); the suite's own profile (no deadline) still applies.

- ``etcdrpc`` is an alias of ``etcd3.etcdrpc``: ``TestClient.test_user_pwd_auth`` patches
  ``mock.patch('etcdrpc.AuthStub')``, a top-level module name the installed package does
  not have (the test fails with ModuleNotFoundError against any server without it).

Nothing else of the suite is touched. This module runs in the suite's process (etcd3,
Hypothesis and pytest importable), not in quorumkv's.
"""
from __future__ import annotations

import os
from typing import Any
from urllib.parse import urlparse

ENV_URL = "PYTHON_ETCD_HTTP_URL"


def endpoint() -> tuple[str, int]:
    """(host, port) of ``PYTHON_ETCD_HTTP_URL`` (http://host:port)."""
    url = urlparse(os.environ[ENV_URL])
    if not url.hostname or not url.port:
        raise ValueError(f"{ENV_URL} is not http://host:port: {os.environ[ENV_URL]!r}")
    return url.hostname, url.port


def pytest_configure(config: Any) -> None:
    import sys

    import etcd3  # type: ignore[import-not-found]  # the suite's etcd3, installed next to it
    import etcd3.etcdrpc  # type: ignore[import-not-found]
    from hypothesis import HealthCheck, settings

    host, port = endpoint()
    original = etcd3.client

    def client(host: str = host, port: int = port, **kwargs: Any) -> Any:
        return original(host=host, port=port, **kwargs)

    client.__doc__ = original.__doc__
    etcd3.client = client
    sys.modules.setdefault("etcdrpc", etcd3.etcdrpc)
    # Loaded before the suite's module registers its own "default" profile, which then
    # inherits this one (its parent is the loaded default).
    settings.register_profile("qkv-compat", deadline=None, suppress_health_check=list(HealthCheck))
    settings.load_profile("qkv-compat")
