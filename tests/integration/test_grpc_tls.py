"""TLS on the gRPC gateway with etcd's flags (issue 18): an https:// --listen-grpc-urls
with --cert-file/--key-file; with --trusted-ca-file and --client-cert-auth a client
certificate signed by that CA is required, and with auth enabled a request without a
token is made as the user its CN names. Through a grpc secure channel and through
etcdctl's --cacert/--cert/--key. The certificates are made with openssl (tests/nodeproc.py
TlsFiles); a node refuses TLS flags it cannot use at start."""
from __future__ import annotations

import os
import re
import shutil
import subprocess

import grpc
import pytest

from protocol.etcdpb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from tests.integration.test_grpc_auth import ETCD, start_etcd
from tests.nodeproc import NodeProcess, TlsFiles

pytestmark = pytest.mark.skipif(not TlsFiles.available(), reason="openssl is not installed (makes the test certs)")
ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
needs_etcdctl = pytest.mark.skipif(not os.access(ETCDCTL, os.X_OK),
                                   reason="etcdctl is not installed (apt-get install etcd-client)")
P = auth_pb2.Permission
T = 10


@pytest.fixture
def tls(tmp_path):
    return TlsFiles(tmp_path / "tls")


@pytest.fixture
def cert_node(tmp_path, tls):
    """TLS, client certificates required (--trusted-ca-file --client-cert-auth)."""
    n = NodeProcess(tmp_path, grpc_tls=tls.node_args(client_cert_auth=True)).start()
    try:
        yield n
    finally:
        n.stop()


def channel(node: NodeProcess, tls: TlsFiles, cert: tuple[str, str] | None = None) -> grpc.Channel:
    creds = grpc.ssl_channel_credentials(
        TlsFiles.read(tls.ca), *((TlsFiles.read(cert[1]), TlsFiles.read(cert[0])) if cert else ()))
    return grpc.secure_channel(node.grpc_endpoint, creds)


def _status(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=T, **kw)
    return info.value.code(), info.value.details()


def etcdctl(endpoint: str, tls: TlsFiles, *args: str, cert: tuple[str, str] | None = None,
            timeout: str = "5s", command_timeout: str = "20s") -> subprocess.CompletedProcess:
    flags = ["--endpoints", endpoint, "--cacert", tls.ca, "--dial-timeout", timeout,
             "--command-timeout", command_timeout]
    if cert:
        flags += ["--cert", cert[0], "--key", cert[1]]
    return subprocess.run([ETCDCTL, *flags, *args], capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, ETCDCTL_API="3"))


def _setup_users(a: rpc_pb2_grpc.AuthStub) -> None:
    """root (role root), alice: no password, READ on /a/; then auth on."""
    a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"), timeout=T)
    a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=T)
    a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="a-reader"), timeout=T)
    a.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(
        name="a-reader", perm=P(permType=P.READ, key=b"/a/", range_end=b"/a0")), timeout=T)
    a.UserAdd(rpc_pb2.AuthUserAddRequest(name="alice", options=auth_pb2.UserAddOptions(no_password=True)),
              timeout=T)
    a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="a-reader"), timeout=T)
    a.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=T)


def test_client_certificate_required_and_its_cn_is_the_user(cert_node, tls):
    root, alice, nobody = tls.client("root"), tls.client("alice"), tls.client("nobody")
    rogue = tls.issue("rogue-root", "root", ca=tls.other_ca())  # CN root, but not signed by our CA

    # no client certificate, or one our CA did not sign: the handshake fails
    for cert in (None, rogue):
        with channel(cert_node, tls, cert) as ch:
            code, _ = _status(rpc_pb2_grpc.KVStub(ch).Range, rpc_pb2.RangeRequest(key=b"k"))
            assert code == grpc.StatusCode.UNAVAILABLE
    # plain text to a TLS port: no answer either
    with grpc.insecure_channel(cert_node.grpc_endpoint) as ch:
        assert _status(rpc_pb2_grpc.KVStub(ch).Range, rpc_pb2.RangeRequest(key=b"k"))[0] == \
            grpc.StatusCode.UNAVAILABLE

    with channel(cert_node, tls, root) as ch:
        _setup_users(rpc_pb2_grpc.AuthStub(ch))
        kv = rpc_pb2_grpc.KVStub(ch)
        # CN=root, no token, no password: root
        kv.Put(rpc_pb2.PutRequest(key=b"/a/1", value=b"v"), timeout=T)
        kv.Put(rpc_pb2.PutRequest(key=b"/b/1", value=b"v"), timeout=T)
        assert list(rpc_pb2_grpc.AuthStub(ch).UserList(rpc_pb2.AuthUserListRequest(), timeout=T).users) == [
            "alice", "root"]
        # a token goes first, as in etcd; a bad one is refused even with a good certificate
        assert _status(kv.Range, rpc_pb2.RangeRequest(key=b"/a/1"), metadata=(("token", "x" * 43),)) == (
            grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")

    with channel(cert_node, tls, alice) as ch:
        kv = rpc_pb2_grpc.KVStub(ch)
        assert kv.Range(rpc_pb2.RangeRequest(key=b"/a/", range_end=b"/a0"), timeout=T).count == 1
        assert _status(kv.Put, rpc_pb2.PutRequest(key=b"/a/2", value=b"v")) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        assert _status(kv.Range, rpc_pb2.RangeRequest(key=b"/b/1")) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        # alice's certificate with root's token: root
        token = rpc_pb2_grpc.AuthStub(ch).Authenticate(
            rpc_pb2.AuthenticateRequest(name="root", password="rootpw"), timeout=T).token
        kv.Put(rpc_pb2.PutRequest(key=b"/a/2", value=b"v"), metadata=(("token", token),), timeout=T)

    with channel(cert_node, tls, nobody) as ch:  # a CN that is no user
        assert _status(rpc_pb2_grpc.KVStub(ch).Range, rpc_pb2.RangeRequest(key=b"/a/1")) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")


# (etcdctl flags before the command, the command, whose certificate: None, "root", "alice")
TLS_SCRIPT = [
    ((), "get k", None),  # no client certificate: the handshake fails
    ((), "user add root --new-user-password rootpw", "root"),
    ((), "auth enable", "root"),
    ((), "role add a-reader", "root"),
    ((), "role grant-permission a-reader read /a/ --prefix", "root"),
    ((), "user add alice --no-password", "root"),
    ((), "user grant-role alice a-reader", "root"),
    ((), "put /a/1 v", "root"),  # CN=root: root, without a password
    ((), "get /a/ --prefix", "alice"),
    ((), "put /a/2 v", "alice"),  # alice may only read /a/
    ((), "user list", "alice"),
    (("--user", "root:rootpw"), "put /a/2 v", "alice"),  # --user's token goes first
    (("--user", "root:bad"), "get /a/2", "alice"),
]
MASK = re.compile(r'"ts":"[^"]*"|endpoint://client-[0-9a-f-]{36}/[0-9.]+:\d+')


def tls_script(endpoint: str, tls: TlsFiles, certs: dict[str, tuple[str, str]]) -> list[tuple[int, str, str]]:
    out = []
    for pre, command, who in TLS_SCRIPT:
        # Without a client certificate the handshake fails and etcdctl retries it until its
        # command timeout: 2 s, not 20, for that step (the same on both sides).
        p = etcdctl(endpoint, tls, *pre, *command.split(), cert=certs.get(who or ""),
                    timeout="2s" if who is None else "5s", command_timeout="2s" if who is None else "20s")
        out.append((p.returncode, p.stdout, MASK.sub("", p.stderr)))
    return out


@needs_etcdctl
def test_etcdctl_with_client_certificates(cert_node, tls, tmp_path):
    certs = {"root": tls.client("root"), "alice": tls.client("alice")}
    ours = tls_script(cert_node.grpc_url, tls, certs)
    assert ours[0][0] != 0 and "context deadline exceeded" in ours[0][2]
    assert [o[1] for o in ours[1:]] == [
        "User root created\n", "Authentication Enabled\n", "Role a-reader created\n", "Role a-reader updated\n",
        "User alice created\n", "Role a-reader is granted to user alice\n", "OK\n", "/a/1\nv\n", "", "", "OK\n", ""]
    assert "Error: etcdserver: permission denied" in ours[9][2] and "permission denied" in ours[10][2]
    assert "Error: etcdserver: authentication failed, invalid user ID or password" in ours[12][2]
    if not os.access(ETCD, os.X_OK):
        pytest.skip("etcd is not installed: checked the output alone, not side by side with etcd")
    etcd_dir = tmp_path / "etcd"
    etcd_dir.mkdir()
    proc, url = start_etcd(etcd_dir, tls_args=["--cert-file", tls.server_cert, "--key-file", tls.server_key,
                                               "--trusted-ca-file", tls.ca, "--client-cert-auth"],
                           ctl_args=["--cacert", tls.ca, "--cert", certs["root"][0], "--key", certs["root"][1]])
    try:
        theirs = tls_script(url, tls, certs)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert ours == theirs


@needs_etcdctl
def test_tls_without_client_certificates(tmp_path, tls):
    """--cert-file/--key-file only: server TLS; a client certificate's CN is never a user."""
    node = NodeProcess(tmp_path, grpc_tls=tls.node_args(client_cert_auth=False)).start()
    try:
        p = etcdctl(node.grpc_url, tls, "put", "k", "v")
        assert (p.returncode, p.stdout) == (0, "OK\n"), p.stderr
        # the server's certificate is checked: another CA's client does not trust it
        other_ca, _ = tls.other_ca()
        creds = grpc.ssl_channel_credentials(TlsFiles.read(other_ca))
        with grpc.secure_channel(node.grpc_endpoint, creds) as ch:
            assert _status(rpc_pb2_grpc.KVStub(ch).Range, rpc_pb2.RangeRequest(key=b"k"))[0] == \
                grpc.StatusCode.UNAVAILABLE
        with channel(node, tls, tls.client("root")) as ch:
            _setup_users(rpc_pb2_grpc.AuthStub(ch))
            assert _status(rpc_pb2_grpc.KVStub(ch).Range, rpc_pb2.RangeRequest(key=b"k")) == (
                grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
    finally:
        node.stop()


@pytest.mark.parametrize("flags, message", [
    (["--listen-grpc-urls", "https://127.0.0.1:{port}"],
     "--listen-grpc-urls https://127.0.0.1:{port} needs --cert-file and --key-file"),
    (["--listen-grpc-urls", "http://127.0.0.1:{port}", "--trusted-ca-file", "{ca}"],
     "--trusted-ca-file needs an https:// URL in --listen-grpc-urls"),
    (["--listen-grpc-urls", "https://127.0.0.1:{port}", "--cert-file", "{missing}", "--key-file", "{key}"],
     "invalid --cert-file '{missing}': no such file"),
    (["--listen-grpc-urls", "https://127.0.0.1:{port}", "--cert-file", "{cert}", "--key-file", "{key}",
      "--client-cert-auth"], "needs --trusted-ca-file"),
])
def test_node_refuses_bad_tls_flags_at_start(tmp_path, tls, flags, message):
    n = NodeProcess(tmp_path)
    values = {"port": n.grpc_endpoint.rsplit(":", 1)[1], "ca": tls.ca, "cert": tls.server_cert,
              "key": tls.server_key, "missing": str(tmp_path / "missing.crt")}
    n.args = [f.format(**values) for f in flags]
    n.start(wait=False)
    try:
        assert n.proc is not None
        assert n.proc.wait(timeout=30) != 0
        assert message.format(**values) in n.log_text()
    finally:
        n.stop()
