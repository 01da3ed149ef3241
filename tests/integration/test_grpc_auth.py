"""etcd's Auth service through the gRPC gateway (issue 18): the RPCs and the `token`
metadata with a grpc channel, and etcdctl's auth commands giving etcd 3.4's output
(compared side by side with a real etcd when /usr/bin/etcd is installed)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from protocol.etcdpb import auth_pb2, rpc_pb2, rpc_pb2_grpc
from tests.nodeproc import NodeProcess, free_port, wait_for

ETCDCTL = shutil.which("etcdctl") or "/usr/bin/etcdctl"
ETCD = shutil.which("etcd") or "/usr/bin/etcd"
P = auth_pb2.Permission
T = 10  # seconds: every RPC's deadline


@pytest.fixture
def node(tmp_path):
    n = NodeProcess(tmp_path, grpc=True).start()
    try:
        yield n
    finally:
        n.stop()


def _status(call, *args, **kw) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=T, **kw)
    return info.value.code(), info.value.details()


def _setup_root(a: rpc_pb2_grpc.AuthStub) -> None:
    a.UserAdd(rpc_pb2.AuthUserAddRequest(name="root", password="rootpw"), timeout=T)
    assert _status(a.AuthEnable, rpc_pb2.AuthEnableRequest()) == (
        grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not have root role")
    a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="root", role="root"), timeout=T)
    a.AuthEnable(rpc_pb2.AuthEnableRequest(), timeout=T)


def test_auth_service_and_token_metadata(node):
    with grpc.insecure_channel(node.grpc_endpoint) as ch:
        a, kv = rpc_pb2_grpc.AuthStub(ch), rpc_pb2_grpc.KVStub(ch)
        assert _status(a.Authenticate, rpc_pb2.AuthenticateRequest(name="root", password="x")) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: authentication is not enabled")
        assert _status(a.AuthEnable, rpc_pb2.AuthEnableRequest()) == (
            grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: root user does not exist")
        _setup_root(a)

        # no user
        assert _status(kv.Range, rpc_pb2.RangeRequest(key=b"k")) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty")
        for name, password in (("root", "wrong"), ("nobody", "x"), ("", "x"), ("x" * 300, "x"),
                               ("root", "p" * 100_000)):
            assert _status(a.Authenticate, rpc_pb2.AuthenticateRequest(name=name, password=password)) == (
                grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")
        got = a.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"), timeout=T)
        assert got.token and got.header.member_id and got.header.cluster_id
        root = (("token", got.token),)
        kv.Put(rpc_pb2.PutRequest(key=b"/a/1", value=b"v"), metadata=root, timeout=T)
        # etcd's gRPC-gateway name for the token works too
        assert kv.Range(rpc_pb2.RangeRequest(key=b"/a/1"), metadata=(("authorization", got.token),),
                        timeout=T).count == 1

        # a token that is not (or no longer) valid: Unauthenticated, on which clients authenticate again
        for bad in ("x" * 43, "", "t" * 5000):
            assert _status(kv.Range, rpc_pb2.RangeRequest(key=b"/a/1"), metadata=(("token", bad),)) == (
                grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token"), bad[:10]

        # users, roles, permissions
        a.RoleAdd(rpc_pb2.AuthRoleAddRequest(name="reader"), metadata=root, timeout=T)
        a.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(
            name="reader", perm=P(permType=P.READ, key=b"/a/", range_end=b"/a0")), metadata=root, timeout=T)
        a.RoleGrantPermission(rpc_pb2.AuthRoleGrantPermissionRequest(
            name="reader", perm=P(permType=P.READWRITE, key=b"k1")), metadata=root, timeout=T)
        role = a.RoleGet(rpc_pb2.AuthRoleGetRequest(role="reader"), metadata=root, timeout=T)
        assert [(p.permType, p.key, p.range_end) for p in role.perm] == [(P.READ, b"/a/", b"/a0"),
                                                                        (P.READWRITE, b"k1", b"")]
        a.UserAdd(rpc_pb2.AuthUserAddRequest(name="alice", password="apw"), metadata=root, timeout=T)
        a.UserGrantRole(rpc_pb2.AuthUserGrantRoleRequest(user="alice", role="reader"), metadata=root, timeout=T)
        assert list(a.UserGet(rpc_pb2.AuthUserGetRequest(name="alice"), metadata=root, timeout=T).roles) == ["reader"]
        assert list(a.UserList(rpc_pb2.AuthUserListRequest(), metadata=root, timeout=T).users) == ["alice", "root"]
        # role root was granted without being added (etcd allows that too): not listed
        assert list(a.RoleList(rpc_pb2.AuthRoleListRequest(), metadata=root, timeout=T).roles) == ["reader"]

        alice = (("token", a.Authenticate(rpc_pb2.AuthenticateRequest(name="alice", password="apw"),
                                          timeout=T).token),)
        assert kv.Range(rpc_pb2.RangeRequest(key=b"/a/", range_end=b"/a0"), metadata=alice, timeout=T).count == 1
        assert _status(kv.Put, rpc_pb2.PutRequest(key=b"/a/2", value=b"v"), metadata=alice) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        assert _status(a.UserList, rpc_pb2.AuthUserListRequest(), metadata=alice) == (
            grpc.StatusCode.PERMISSION_DENIED, "etcdserver: permission denied")
        # a user may read itself (etcd too)
        assert list(a.UserGet(rpc_pb2.AuthUserGetRequest(name="alice"), metadata=alice, timeout=T).roles) == [
            "reader"]

        # a password change ends the user's tokens
        a.UserChangePassword(rpc_pb2.AuthUserChangePasswordRequest(name="alice", password="new"),
                             metadata=root, timeout=T)
        assert _status(kv.Range, rpc_pb2.RangeRequest(key=b"/a/1"), metadata=alice) == (
            grpc.StatusCode.UNAUTHENTICATED, "etcdserver: invalid auth token")

        # a user without a password cannot authenticate (only by a client certificate)
        a.UserAdd(rpc_pb2.AuthUserAddRequest(name="cn-only", options=auth_pb2.UserAddOptions(no_password=True)),
                  metadata=root, timeout=T)
        assert _status(a.Authenticate, rpc_pb2.AuthenticateRequest(name="cn-only", password="")) == (
            grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password")

        # etcd's refusals
        checks = [
            (a.UserRevokeRole, rpc_pb2.AuthUserRevokeRoleRequest(name="root", role="root"),
             grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: invalid auth management"),
            (a.RoleRevokePermission, rpc_pb2.AuthRoleRevokePermissionRequest(role="reader", key=b"k2"),
             grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: permission is not granted to the role"),
            (a.UserGet, rpc_pb2.AuthUserGetRequest(name="nobody"),
             grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: user name not found"),
            (a.RoleGet, rpc_pb2.AuthRoleGetRequest(role="nobody"),
             grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name not found"),
            (a.UserAdd, rpc_pb2.AuthUserAddRequest(name="", password="x"),
             grpc.StatusCode.INVALID_ARGUMENT, "etcdserver: user name is empty"),
            (a.RoleAdd, rpc_pb2.AuthRoleAddRequest(name="reader"),
             grpc.StatusCode.FAILED_PRECONDITION, "etcdserver: role name already exists"),
        ]
        for call, request, code, message in checks:
            assert _status(call, request, metadata=root) == (code, message), type(request).__name__
        a.RoleRevokePermission(rpc_pb2.AuthRoleRevokePermissionRequest(role="reader", key=b"k1"),
                               metadata=root, timeout=T)
        a.UserRevokeRole(rpc_pb2.AuthUserRevokeRoleRequest(name="alice", role="reader"), metadata=root, timeout=T)
        a.RoleDelete(rpc_pb2.AuthRoleDeleteRequest(role="reader"), metadata=root, timeout=T)
        a.UserDelete(rpc_pb2.AuthUserDeleteRequest(name="alice"), metadata=root, timeout=T)
        disabled = a.AuthDisable(rpc_pb2.AuthDisableRequest(), metadata=root, timeout=T)
        assert disabled.header.revision == 2
        assert kv.Range(rpc_pb2.RangeRequest(key=b"/a/1"), timeout=T).count == 1


# --- etcdctl, side by side with etcd ---------------------------------------------------------
ETCDCTL_SCRIPT = [
    "user add root --new-user-password pw",
    "auth enable",  # etcdctl adds the role root and grants it on "root user does not have root role"
    "get foo",
    "--user root:bad get foo",
    "--user root:pw put foo bar",
    "--user root:pw get foo",
    "--user root:pw role add reader",
    "--user root:pw role grant-permission reader read /a/ --prefix",
    "--user root:pw role grant-permission reader readwrite k1",
    "--user root:pw role grant-permission reader write k2 k5",
    "--user root:pw role get reader",
    "--user root:pw role list",
    "--user root:pw user add alice:apw",
    "--user root:pw user add bob --no-password",
    "--user root:pw user grant-role alice reader",
    "--user root:pw user get alice",
    "--user root:pw user get alice --detail",
    "--user root:pw user list",
    "--user alice:apw get /a/x",
    "--user alice:apw put /a/x 1",
    "--user root:pw user revoke-role alice reader",
    "--user root:pw user revoke-role alice reader",
    "--user root:pw role revoke-permission reader k1",
    "--user root:pw role revoke-permission reader k1",
    "--user root:pw user delete root",
    "--user root:pw role delete root",
    "--user root:pw user grant-role alice nosuch",
    "--user root:pw user add alice:x",
    "--user root:pw -w json user list",
    "--user root:pw user delete alice",
    "--user root:pw role delete reader",
    "--user root:pw auth disable",
    "get foo",
]
MASKS = [
    (re.compile(r'"ts":"[^"]*"'), '"ts":"T"'),
    (re.compile(r"client-[0-9a-f-]{36}/[0-9.]+:\d+"), "client-ID/ENDPOINT"),
    (re.compile(r'"(cluster_id|member_id|revision|raft_term)":\d+'), r'"\1":N'),
]


def etcdctl_script(endpoint: str) -> list[str]:
    out = []
    env = dict(os.environ, ETCDCTL_API="3")
    for line in ETCDCTL_SCRIPT:
        p = subprocess.run([ETCDCTL, "--endpoints", endpoint, "--dial-timeout", "5s", "--command-timeout", "20s",
                            *line.split()], capture_output=True, text=True, env=env, timeout=60)
        text = f"$ etcdctl {line}\nrc={p.returncode}\n{p.stdout}{p.stderr}"
        for pattern, repl in MASKS:
            text = pattern.sub(repl, text)
        out.append(text)
    return out


def start_etcd(tmp_path: Path, tls_args: list[str] | None = None,
               ctl_args: list[str] | None = None) -> tuple[subprocess.Popen, str]:
    """A one-member etcd on free ports; its client URL. `tls_args`: etcd's TLS flags (the
    client URL is then https://); `ctl_args`: what etcdctl needs to reach it (certs)."""
    cp, pp = free_port(), free_port()
    client, peer = f"{'https' if tls_args else 'http'}://127.0.0.1:{cp}", f"http://127.0.0.1:{pp}"
    log = open(tmp_path / "etcd.log", "wb")
    proc = subprocess.Popen([ETCD, "--name", "e", "--data-dir", str(tmp_path / "e.etcd"),
                             "--listen-client-urls", client, "--advertise-client-urls", client,
                             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                             "--initial-cluster", f"e={peer}", "--logger", "zap", "--log-level", "error",
                             *(tls_args or [])],
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()

    def healthy() -> bool:
        assert proc.poll() is None, (tmp_path / "etcd.log").read_text()[-2000:]
        return subprocess.run([ETCDCTL, "--endpoints", client, *(ctl_args or []), "endpoint", "health"],
                              capture_output=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30).returncode == 0
    try:
        wait_for(healthy, 60, "etcd to serve", interval=0.2)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc, client


@pytest.mark.skipif(not os.access(ETCDCTL, os.X_OK), reason="etcdctl is not installed (apt-get install etcd-client)")
def test_etcdctl_auth_commands(node, tmp_path):
    ours = etcdctl_script(node.grpc_endpoint)
    text = "\n".join(ours)
    for expected in ("User root created", "Authentication Enabled", "Error: etcdserver: user name is empty",
                     "Error: etcdserver: authentication failed, invalid user ID or password",
                     "Role reader\nKV Read:\n\t[/a/, /a0) (prefix /a/)\n\tk1\nKV Write:\n\tk1\n\t[k2, k5)\n",
                     "User: alice\nRoles: reader\n", "alice\nbob\nroot\n",
                     "Error: etcdserver: permission denied", "Authentication Disabled"):
        assert expected in text, expected
    if not os.access(ETCD, os.X_OK):
        pytest.skip("etcd is not installed: checked the output alone, not side by side with etcd")
    proc, endpoint = start_etcd(tmp_path)
    try:
        theirs = etcdctl_script(endpoint)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert ours == theirs


def test_token_from_one_member_works_on_every_member_until_it_expires(tmp_path):
    """Authenticate through one member's gRPC port, use the token on the others (our
    authenticate goes through the log); a token unused for --auth-token-ttl seconds on a
    member is Unauthenticated "invalid auth token" there."""
    from tests.nodeproc import Cluster

    c = Cluster(tmp_path, 3, args=["--auth-token-ttl", "1"], grpc=True).start()
    try:
        chans = [grpc.insecure_channel(n.grpc_endpoint) for n in c.nodes]
        try:
            a = rpc_pb2_grpc.AuthStub(chans[0])
            _setup_root(a)
            token = a.Authenticate(rpc_pb2.AuthenticateRequest(name="root", password="rootpw"), timeout=T).token
            md = (("token", token),)
            rpc_pb2_grpc.KVStub(chans[1]).Put(rpc_pb2.PutRequest(key=b"k", value=b"v"), metadata=md, timeout=T)
            kv3 = rpc_pb2_grpc.KVStub(chans[2])
            assert kv3.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=md, timeout=T).count == 1

            def expired() -> bool:  # each use that succeeds renews it for 1 s; polls are 1.5 s apart
                try:
                    kv3.Range(rpc_pb2.RangeRequest(key=b"k"), metadata=md, timeout=T)
                    return False
                except grpc.RpcError as e:
                    assert (e.code(), e.details()) == (grpc.StatusCode.UNAUTHENTICATED,
                                                       "etcdserver: invalid auth token")
                    return True
            wait_for(expired, 30, "the token to expire on member 3", interval=1.5)
        finally:
            for ch in chans:
                ch.close()
    finally:
        c.stop()
