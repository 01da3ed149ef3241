"""etcd's Auth service as native auth ops (actors/grpcgw/auth.py), who a gRPC request is
(Backend.identity), and the TLS flags a node refuses at start (nodes/config.py)."""
from __future__ import annotations

import pytest

from actors.grpcgw import auth
from actors.grpcgw.backend import INVALID_TOKEN, Backend, identity_fields
from actors.grpcgw.errors import status_of
from nodes.config import ConfigError, load_config
from protocol import errors
from protocol.etcdpb import auth_pb2, rpc_pb2
from tests.nodeproc import TlsFiles

P = auth_pb2.Permission


# --- requests -> native ops ----------------------------------------------------------------
def test_user_ops():
    assert auth.authenticate_op(rpc_pb2.AuthenticateRequest(name="root", password="pw")) == {
        "op": "authenticate", "name": "root", "password": "pw"}
    assert auth.user_add_op(rpc_pb2.AuthUserAddRequest(name="u", password="p")) == {
        "op": "user_add", "name": "u", "password": "p"}
    # etcd ignores the password of a no_password user; so do we (ours would refuse both)
    no_pw = rpc_pb2.AuthUserAddRequest(name="u", password="ignored", options=auth_pb2.UserAddOptions(no_password=True))
    assert auth.user_add_op(no_pw) == {"op": "user_add", "name": "u", "no_password": True}
    assert auth.user_add_op(rpc_pb2.AuthUserAddRequest(name="u", options=auth_pb2.UserAddOptions())) == {
        "op": "user_add", "name": "u", "password": ""}
    assert auth.user_grant_role_op(rpc_pb2.AuthUserGrantRoleRequest(user="u", role="r")) == {
        "op": "user_grant_role", "name": "u", "role": "r"}
    assert auth.user_revoke_role_op(rpc_pb2.AuthUserRevokeRoleRequest(name="u", role="r")) == {
        "op": "user_revoke_role", "name": "u", "role": "r"}
    assert auth.user_change_password_op(rpc_pb2.AuthUserChangePasswordRequest(name="u", password="n")) == {
        "op": "user_change_password", "name": "u", "password": "n"}
    assert auth.user_get_op(rpc_pb2.AuthUserGetRequest(name="u"))["name"] == "u"
    assert auth.user_delete_op(rpc_pb2.AuthUserDeleteRequest(name="u")) == {"op": "user_delete", "name": "u"}


def test_role_ops_and_permissions():
    assert auth.role_add_op(rpc_pb2.AuthRoleAddRequest(name="r")) == {"op": "role_add", "name": "r"}
    assert auth.role_get_op(rpc_pb2.AuthRoleGetRequest(role="r")) == {"op": "role_get", "name": "r"}
    assert auth.role_delete_op(rpc_pb2.AuthRoleDeleteRequest(role="r")) == {"op": "role_delete", "name": "r"}
    grant = rpc_pb2.AuthRoleGrantPermissionRequest(name="r", perm=P(permType=P.READWRITE, key=b"/a/", range_end=b"/a0"))
    assert auth.role_grant_permission_op(grant) == {
        "op": "role_grant_permission", "name": "r",
        "perm": {"perm_type": "READWRITE", "key": b"/a/", "range_end": b"/a0"}}
    # READ is proto3's default (0): a Permission with no type set is READ, as in etcd
    assert auth.perm_fields(P(key=b"k"))["perm_type"] == "READ"
    assert auth.perm_fields(P(permType=P.WRITE, key=b"k"))["perm_type"] == "WRITE"
    # an enum value etcd does not define goes on as a number: the native validator refuses it
    odd = P()
    odd.ParseFromString(b"\x08\x07\x12\x01k")
    assert auth.perm_fields(odd)["perm_type"] == 7
    revoke = rpc_pb2.AuthRoleRevokePermissionRequest(role="r", key=b"/a/", range_end=b"/a0")
    assert auth.role_revoke_permission_op(revoke) == {
        "op": "role_revoke_permission", "name": "r", "key": b"/a/", "range_end": b"/a0"}


def test_role_get_response():
    header = rpc_pb2.ResponseHeader(cluster_id=1, member_id=2, revision=3, raft_term=4)
    reply = {"perm": [{"perm_type": "READ", "key": b"/a/", "range_end": b"/a0"},
                      {"perm_type": "READWRITE", "key": b"k", "range_end": b""}]}
    out = auth.role_get_response(reply, header)
    assert out.header.revision == 3
    assert [(p.permType, p.key, p.range_end) for p in out.perm] == [(P.READ, b"/a/", b"/a0"),
                                                                   (P.READWRITE, b"k", b"")]
    assert list(auth.role_get_response({}, header).perm) == []


def test_auth_errors_are_etcds_statuses():
    import grpc
    for err, code, message in [
        (errors.AuthFailed(), grpc.StatusCode.INVALID_ARGUMENT,
         "etcdserver: authentication failed, invalid user ID or password"),
        (errors.InvalidAuthToken(), grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"),
        (errors.UserEmpty(), grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty"),
        (errors.PermissionDenied(), grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied"),
        (errors.AuthNotEnabled(), grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled"),
    ]:
        assert status_of(err) == (code, message)


# --- who asks --------------------------------------------------------------------------------
def test_identity_token_metadata():
    assert identity_fields((), None) == {}
    assert identity_fields((("token", "abc"),), None) == {"token": "abc"}
    assert identity_fields((("authorization", "abc"),), None) == {"token": "abc"}
    # `token` wins over `authorization`, the first of several wins (etcd takes ts[0])
    assert identity_fields((("authorization", "x"), ("token", "a"), ("token", "b")), None) == {"token": "a"}
    # what cannot be one of our tokens is still a token: "invalid auth token" when auth is on
    assert identity_fields((("token", "t" * 513),), None) == {"token": INVALID_TOKEN}
    assert identity_fields((("token", ""),), None) == {"token": INVALID_TOKEN}
    assert identity_fields((("token", b"\xff\xfe"),), None) == {"token": INVALID_TOKEN}
    assert ":" in INVALID_TOKEN  # never a URL-safe base64 token of ours
    assert identity_fields((("user-agent", "grpc"),), None) == {}


def test_identity_certificate_cn():
    assert identity_fields((), [b"root"]) == {"as_user": "root"}
    assert identity_fields((("token", "t"),), [b"alice"]) == {"token": "t", "as_user": "alice"}
    # a CN no user can have is not passed: the request has no user
    for cn in (b"", b"\x1bqkv-member", b"a\nb", "é".encode() * 129, b"\xff"):
        assert identity_fields((), [cn]) == {}, cn
    assert identity_fields((), ["é".encode() * 128]) == {"as_user": "é" * 128}


class _Context:
    def __init__(self, metadata, auth_context):
        self._md, self._auth = metadata, auth_context

    def invocation_metadata(self):
        return self._md

    def auth_context(self):
        return self._auth


@pytest.mark.parametrize("cert_auth", [False, True])
def test_backend_identity_honours_cn_only_with_client_cert_auth(cert_auth):
    b = Backend.__new__(Backend)
    b.cert_auth = cert_auth
    ctx = _Context((("token", "t"),), {"x509_common_name": [b"root"], "transport_security_type": [b"ssl"]})
    assert b.identity(ctx) == ({"token": "t", "as_user": "root"} if cert_auth else {"token": "t"})
    assert b.identity(_Context(None, {})) == {}


# --- TLS flags -------------------------------------------------------------------------------
needs_openssl = pytest.mark.skipif(not TlsFiles.available(), reason="openssl is not installed (makes the test certs)")


def _cfg(tmp_path, **flags):
    base = {"name": "n1", "data-dir": str(tmp_path / "d")}
    return load_config({**base, **flags}, env={})


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    if not TlsFiles.available():
        pytest.skip("openssl is not installed (makes the test certs)")
    return TlsFiles(tmp_path_factory.mktemp("tls"))


@needs_openssl
def test_tls_config_accepted(tmp_path, tls):
    cfg = _cfg(tmp_path, **{"listen-grpc-urls": "https://127.0.0.1:2379", "cert-file": tls.server_cert,
                            "key-file": tls.server_key, "trusted-ca-file": tls.ca, "client-cert-auth": True})
    assert cfg.listen_grpc_urls == ["https://127.0.0.1:2379"] and cfg.client_cert_auth
    # TLS beyond loopback is not plain text: no --insecure-client needed
    _cfg(tmp_path, **{"listen-grpc-urls": "https://0.0.0.0:2379", "cert-file": tls.server_cert,
                      "key-file": tls.server_key})
    # http and https side by side (etcd too)
    _cfg(tmp_path, **{"listen-grpc-urls": "http://127.0.0.1:2379,https://127.0.0.1:2380",
                      "cert-file": tls.server_cert, "key-file": tls.server_key})


@needs_openssl
def test_tls_config_refused(tmp_path, tls):
    https = {"listen-grpc-urls": "https://127.0.0.1:2379"}
    pair = {"cert-file": tls.server_cert, "key-file": tls.server_key}
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    other_cert, other_key = tls.client("someone")
    encrypted = tmp_path / "enc.key"
    import subprocess
    subprocess.run([TlsFiles.OPENSSL, "pkey", "-in", tls.server_key, "-out", str(encrypted), "-aes256",
                    "-passout", "pass:secret"], check=True, capture_output=True)
    cases = [
        ({**https}, "--listen-grpc-urls https://127.0.0.1:2379 needs --cert-file and --key-file"),
        ({**https, "cert-file": tls.server_cert}, "needs --cert-file and --key-file"),
        ({**https, **pair, "cert-file": str(tmp_path / "missing.crt")}, "invalid --cert-file"),
        ({**https, **pair, "trusted-ca-file": str(tmp_path / "missing.crt")}, "invalid --trusted-ca-file"),
        ({**pair}, "--cert-file needs an https:// URL in --listen-grpc-urls"),
        ({"listen-grpc-urls": "http://127.0.0.1:2379", **pair}, "--cert-file needs an https:// URL"),
        ({"listen-grpc-urls": "http://127.0.0.1:2379", "trusted-ca-file": tls.ca},
         "--trusted-ca-file needs an https:// URL"),
        ({"cert-file": tls.server_cert}, "--cert-file needs --key-file"),
        ({"key-file": tls.server_key}, "--key-file needs --cert-file"),
        ({**https, **pair, "client-cert-auth": True}, "--client-cert-auth with --listen-grpc-urls "
                                                       "https://127.0.0.1:2379 needs --trusted-ca-file"),
        ({**https, "cert-file": str(garbage), "key-file": tls.server_key}, "not a PEM certificate"),
        ({**https, "cert-file": tls.server_cert, "key-file": other_key}, "its matching private key"),
        ({**https, "cert-file": tls.server_cert, "key-file": str(encrypted)}, "the private key is encrypted"),
        ({**https, **pair, "trusted-ca-file": str(garbage)}, "not a PEM CA certificate"),
    ]
    assert other_cert
    for flags, message in cases:
        with pytest.raises(ConfigError) as info:
            _cfg(tmp_path, **flags)
        assert message in str(info.value), (flags, str(info.value))


def test_can_authenticate():
    ok = rpc_pb2.AuthenticateRequest(name="root", password="pw")
    assert auth.can_authenticate(ok)
    assert auth.can_authenticate(rpc_pb2.AuthenticateRequest(name="root", password="p" * 1024))
    for bad in (rpc_pb2.AuthenticateRequest(name="", password="pw"),
                rpc_pb2.AuthenticateRequest(name="x" * 257, password="pw"),
                rpc_pb2.AuthenticateRequest(name="a\tb", password="pw"),
                rpc_pb2.AuthenticateRequest(name="root", password="p" * 1025)):
        assert not auth.can_authenticate(bad)
