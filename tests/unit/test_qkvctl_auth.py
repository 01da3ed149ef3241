"""qkvctl auth/user/role and the security globals against the fake gateway: etcdctl 3.4's
output in every -w format (strings taken from etcdctl 3.4.23) and its exit codes."""
from __future__ import annotations

import base64
import io
import json
import os
import sys

import pytest
import zmq
import zmq.auth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
for p in (ROOT, os.path.join(ROOT, "tests")):
    if p not in sys.path:
        sys.path.insert(0, p)

from actors.storage.auth import verify_password  # noqa: E402
from fakeserver import CLUSTER_ID, MEMBER_ID, FakeServer  # noqa: E402
from protocol.client import cli  # noqa: E402
from protocol.client.cli import normalize_bool_flags, run, split_user  # noqa: E402

HDR = {"cluster_id": CLUSTER_ID, "member_id": MEMBER_ID, "revision": 1, "raft_term": 2}
HDR_JSON = json.dumps({"header": HDR}, separators=(",", ":"))
HDR_FIELDS = (f'"ClusterID" : {CLUSTER_ID}\n"MemberID" : {MEMBER_ID}\n"Revision" : 1\n'
              '"RaftTerm" : 2\n')
TABLE_ERR = "Error: table not supported as output format\n"
FIELDS_ERR = "Error: fields not supported as output format\n"


class Tty(io.TextIOWrapper):
    def isatty(self) -> bool:
        return True


def make_ctl(srv, capsys, monkeypatch):
    def call(*argv: str, stdin: str = "", tty: bool = False, endpoint: str | None = None):
        raw = io.BytesIO(stdin.encode())
        monkeypatch.setattr(sys, "stdin", Tty(raw) if tty else io.TextIOWrapper(raw))
        capsys.readouterr()
        rc = run(["--endpoints", endpoint or srv.address, "--command-timeout", "2s", *argv])
        out = capsys.readouterr()
        return rc, out.out, out.err
    return call


@pytest.fixture
def ctl(srv, capsys, monkeypatch):
    return make_ctl(srv, capsys, monkeypatch)


def auth_ops(srv):
    return [r for r in srv.requests if r["op"] not in ("authenticate",)]


# -- pure helpers ---------------------------------------------------------------------------
def test_user_flag_parsing():
    assert split_user(None, None) == (None, None)
    assert split_user("root:pw", None) == ("root", "pw")
    assert split_user("root:p:w", None) == ("root", "p:w")
    assert split_user("root", None) == ("root", None)  # asked for
    assert split_user("ro:ot", "pw") == ("ro:ot", "pw")  # --password: --user is the whole name
    assert split_user("root:", None) == ("root", "")
    assert normalize_bool_flags(["user", "add", "x", "--interactive=false", "--detail=true",
                                 "--prefix=false", "--", "--interactive=false"]) == [
        "user", "add", "x", "--no-interactive", "--detail", "--", "--interactive=false"]


# -- auth --------------------------------------------------------------------------------
def test_auth_enable_creates_the_root_role_like_etcdctl(ctl, srv):
    assert ctl("auth", "enable") == (1, "", "Error: etcdserver: root user does not exist\n")
    assert ctl("user", "add", "root", "--new-user-password", "rootpw") == (0, "User root created\n", "")
    for fmt in ("simple", "json", "fields", "table"):  # the same line in every format
        srv.store.auth_change({"op": "auth_disable"})
        assert ctl("-w", fmt, "auth", "enable") == (0, "Authentication Enabled\n", "")
    assert srv.store.auth.users["root"].roles == ["root"] and "root" in srv.store.auth.roles
    assert ctl("get", "k") == (1, "", "Error: etcdserver: user name is empty\n")
    assert ctl("auth", "disable") == (1, "", "Error: etcdserver: user name is empty\n")
    assert ctl("-w", "json", "--user", "root:rootpw", "auth", "disable") == (0, "Authentication Disabled\n", "")
    assert ctl("auth", "enable", "x")[0] == 128


def test_auth_status_every_format(ctl, srv):
    srv.store.auth_change(*({"op": "role_add", "name": f"r{i}"} for i in range(6)))  # revision 1 -> 7
    assert ctl("auth", "status") == (0, "Authentication Status: false\nAuthRevision: 7\n", "")
    assert ctl("-w", "json", "auth", "status") == (0, json.dumps(
        {"header": HDR, "authRevision": 7}, separators=(",", ":")) + "\n", "")
    srv.enable_auth()
    assert ctl("-w", "json", "auth", "status")[1] == json.dumps(
        {"header": HDR, "enabled": True, "authRevision": 10}, separators=(",", ":")) + "\n"
    assert ctl("-w", "fields", "auth", "status") == (  # user_add root, grant root, enable: 3 changes
        0, HDR_FIELDS + '"Enabled" : true\n"AuthRevision" : 10\n', "")
    assert ctl("-w", "table", "auth", "status") == (4, "", TABLE_ERR)


# -- user ------------------------------------------------------------------------------------
def test_user_add_forms(ctl, srv):
    def users():
        return srv.store.auth.users
    assert ctl("user", "add", "a:apw") == (0, "User a created\n", "")
    assert verify_password(users()["a"].password, "apw")
    assert ctl("user", "add", "b", "--interactive=false", stdin="bpw more\n") == (0, "User b created\n", "")
    assert verify_password(users()["b"].password, "bpw")
    assert ctl("user", "add", "c", "--new-user-password=cpw") == (0, "User c created\n", "")
    assert ctl("user", "add", "d:x", "--no-password") == (0, "User d:x created\n", "")
    assert users()["d:x"].password is None
    key = zmq.curve_keypair()[0].decode()
    assert ctl("user", "add", "svc", "--no-password", "--public-key", key) == (0, "User svc created\n", "")
    assert users()["svc"].key == key
    assert ctl("user", "add", "svc2", "--no-password", "--public-key", "bad")[0] == 128
    # interactive: asked twice on a terminal
    answers = iter(["epw", "epw"])
    import getpass
    orig = getpass.getpass
    getpass.getpass = lambda prompt="": next(answers)
    try:
        assert ctl("user", "add", "e", tty=True) == (0, "User e created\n", "")
        answers = iter(["x", "y"])
        assert ctl("user", "add", "f", tty=True) == (128, "", "Error: given passwords are different\n")
        answers = iter([""])
        assert ctl("user", "add", "f", tty=True) == (128, "", "Error: empty password\n")
    finally:
        getpass.getpass = orig
    assert verify_password(users()["e"].password, "epw")
    assert ctl("user", "add", "g")[0] == 128  # not a terminal: cannot ask
    assert ctl("user", "add") == (128, "", "Error: user add command requires user name as its argument\n")
    assert ctl("user", "add", "a", "b")[0] == 128
    assert ctl("user", "add", "a:x") == (1, "", "Error: etcdserver: user name already exists\n")
    assert ctl("-w", "json", "user", "add", "h:x") == (0, HDR_JSON + "\n", "")
    assert ctl("-w", "fields", "user", "add", "i:x") == (0, HDR_FIELDS, "")
    assert ctl("-w", "table", "user", "add", "j:x") == (4, "", TABLE_ERR)
    assert "j" in users()  # etcdctl sends first, then fails to print


def test_user_commands_every_format(ctl, srv):
    srv.store.auth_change(
        {"op": "user_add", "name": "bob", "password": "pw"}, {"op": "user_add", "name": "al", "password": "pw"},
        {"op": "role_add", "name": "r1"}, {"op": "role_add", "name": "r2"},
        {"op": "role_grant_permission", "name": "r1", "perm": {"perm_type": "READ", "key": b"/a"}})
    assert ctl("user", "grant-role", "bob", "r1") == (0, "Role r1 is granted to user bob\n", "")
    assert ctl("-w", "json", "user", "grant-role", "bob", "r2") == (0, HDR_JSON + "\n", "")
    assert ctl("-w", "fields", "user", "grant-role", "al", "r2") == (0, HDR_FIELDS, "")
    assert ctl("-w", "table", "user", "grant-role", "al", "r1") == (4, "", TABLE_ERR)
    assert ctl("user", "grant-role", "bob", "nope") == (1, "", "Error: etcdserver: role name not found\n")
    assert ctl("user", "grant-role", "bob")[0] == 128
    assert ctl("user", "get", "bob") == (0, "User: bob\nRoles: r1 r2\n", "")
    assert ctl("user", "get", "nobody") == (1, "", "Error: etcdserver: user name not found\n")
    assert ctl("-w", "json", "user", "get", "bob") == (0, json.dumps(
        {"header": HDR, "roles": ["r1", "r2"]}, separators=(",", ":")) + "\n", "")
    assert ctl("-w", "fields", "user", "get", "bob") == (4, "", FIELDS_ERR)
    assert ctl("-w", "table", "user", "get", "bob") == (4, "", TABLE_ERR)
    assert ctl("user", "get", "bob", "--detail") == (
        0, "User: bob\n\nRole r1\nKV Read:\n\t/a\nKV Write:\n\nRole r2\nKV Read:\nKV Write:\n", "")
    assert ctl("-w", "json", "user", "get", "bob", "--detail")[1] == (
        "User: bob\n\n" + json.dumps({"header": HDR, "perm": [{"key": base64.b64encode(b"/a").decode()}]},
                                     separators=(",", ":")) + "\n\n" + HDR_JSON + "\n")
    assert ctl("-w", "table", "user", "get", "bob", "--detail") == (4, "User: bob\n\n", TABLE_ERR)
    assert ctl("user", "list") == (0, "al\nbob\n", "")
    assert ctl("-w", "json", "user", "list") == (0, json.dumps(
        {"header": HDR, "users": ["al", "bob"]}, separators=(",", ":")) + "\n", "")
    assert ctl("-w", "fields", "user", "list") == (4, "", FIELDS_ERR)
    assert ctl("user", "list", "x")[0] == 128
    assert ctl("user", "revoke-role", "bob", "r1") == (0, "Role r1 is revoked from user bob\n", "")
    assert ctl("user", "revoke-role", "bob", "r1") == (1, "", "Error: etcdserver: role is not granted to the user\n")
    assert ctl("-w", "fields", "user", "revoke-role", "bob", "r2") == (0, HDR_FIELDS, "")
    assert ctl("user", "passwd", "bob", "--interactive=false", stdin="newpw\n") == (0, "Password updated\n", "")
    assert verify_password(srv.store.auth.users["bob"].password, "newpw")
    assert ctl("-w", "json", "user", "passwd", "bob", "--interactive=false", stdin="x\n") == (0, HDR_JSON + "\n", "")
    assert ctl("user", "passwd", "nobody", "--interactive=false", stdin="x\n") == (
        1, "", "Error: etcdserver: user name not found\n")
    assert ctl("user", "passwd")[0] == 128
    assert ctl("user", "delete", "bob") == (0, "User bob deleted\n", "")
    assert ctl("-w", "fields", "user", "delete", "al") == (0, HDR_FIELDS, "")
    assert ctl("user", "delete", "bob") == (1, "", "Error: etcdserver: user name not found\n")


# -- role ------------------------------------------------------------------------------------
def test_role_commands_every_format(ctl, srv):
    assert ctl("role", "add", "r") == (0, "Role r created\n", "")
    assert ctl("-w", "json", "role", "add", "rj") == (0, HDR_JSON + "\n", "")
    assert ctl("-w", "fields", "role", "add", "rf") == (0, HDR_FIELDS, "")
    assert ctl("-w", "table", "role", "add", "rt") == (4, "", TABLE_ERR)
    assert ctl("role", "add", "r") == (1, "", "Error: etcdserver: role name already exists\n")
    assert ctl("role", "list") == (0, "r\nrf\nrj\nrt\n", "")
    assert ctl("-w", "json", "role", "list")[1] == json.dumps(
        {"header": HDR, "roles": ["r", "rf", "rj", "rt"]}, separators=(",", ":")) + "\n"
    assert ctl("-w", "fields", "role", "list") == (0, HDR_FIELDS + '"Roles" : "r" "rf" "rj" "rt"\n', "")
    assert ctl("-w", "table", "role", "list") == (4, "", TABLE_ERR)
    for args in (("read", "", "--from-key"), ("read", "/a"), ("write", "/b", "/c"),
                 ("READWRITE", "/p/", "--prefix"), ("Read", "/f", "--from-key=true")):
        assert ctl("role", "grant-permission", "r", *args) == (0, "Role r updated\n", "")
    perms = srv.store.auth.roles["r"]
    assert {(p.perm_type, p.key, p.range_end) for p in perms} == {
        ("READ", b"\x00", b"\x00"), ("READ", b"/a", b""), ("WRITE", b"/b", b"/c"),
        ("READWRITE", b"/p/", b"/p0"), ("READ", b"/f", b"\x00")}
    assert ctl("-w", "json", "role", "grant-permission", "rj", "read", "/a") == (0, HDR_JSON + "\n", "")
    assert ctl("-w", "fields", "role", "grant-permission", "rf", "read", "/a") == (0, HDR_FIELDS, "")
    assert ctl("-w", "table", "role", "grant-permission", "rt", "read", "/a") == (4, "", TABLE_ERR)
    assert ctl("role", "grant-permission", "r", "bogus", "/a") == (128, "", "Error: invalid permission type: bogus\n")
    assert ctl("role", "grant-permission", "r", "read") == (128, "", (
        "Error: role grant command requires role name, permission type, and key [endkey] as its argument\n"))
    assert ctl("role", "grant-permission", "r", "read", "/a", "/b", "--prefix") == (
        128, "", "Error: unexpected endkey argument with --prefix flag\n")
    assert ctl("role", "grant-permission", "r", "read", "/a", "/b", "--from-key") == (
        128, "", "Error: unexpected endkey argument with --from-key flag\n")
    assert ctl("role", "grant-permission", "r", "read", "/a", "--prefix", "--from-key") == (
        128, "", "Error: --from-key and --prefix flags are mutually exclusive\n")
    assert ctl("role", "grant-permission", "nope", "read", "/a") == (1, "", "Error: etcdserver: role name not found\n")
    assert ctl("role", "get", "r") == (0, (
        "Role r\nKV Read:\n\t[\x00, <open ended>\n\t/a\n\t[/f, <open ended>\n\t[/p/, /p0) (prefix /p/)\n"
        "KV Write:\n\t[/b, /c) (prefix /b)\n\t[/p/, /p0) (prefix /p/)\n"), "")
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    assert ctl("-w", "json", "role", "get", "r")[1] == json.dumps({"header": HDR, "perm": [
        {"key": b64(b"\x00"), "range_end": b64(b"\x00")}, {"key": b64(b"/a")},
        {"permType": 1, "key": b64(b"/b"), "range_end": b64(b"/c")},
        {"key": b64(b"/f"), "range_end": b64(b"\x00")},
        {"permType": 2, "key": b64(b"/p/"), "range_end": b64(b"/p0")}]}, separators=(",", ":")) + "\n"
    assert ctl("-w", "fields", "role", "get", "r")[1] == HDR_FIELDS + (
        '"PermType" :  READ\n"Key" : "\\x00"\n"RangeEnd" : "\\x00"\n'
        '"PermType" :  READ\n"Key" : "/a"\n"RangeEnd" : ""\n'
        '"PermType" :  WRITE\n"Key" : "/b"\n"RangeEnd" : "/c"\n'
        '"PermType" :  READ\n"Key" : "/f"\n"RangeEnd" : "\\x00"\n'
        '"PermType" :  READWRITE\n"Key" : "/p/"\n"RangeEnd" : "/p0"\n')
    assert ctl("-w", "table", "role", "get", "r") == (4, "", TABLE_ERR)
    assert ctl("role", "get", "nope") == (1, "", "Error: etcdserver: role name not found\n")
    assert ctl("role", "revoke-permission", "r", "/a") == (0, "Permission of key /a is revoked from role r\n", "")
    assert ctl("role", "revoke-permission", "r", "/b", "/c") == (
        0, "Permission of range [/b, /c) is revoked from role r\n", "")
    assert ctl("role", "revoke-permission", "r", "/f", "--from-key") == (
        0, "Permission of range [/f, <open ended> is revoked from role r\n", "")
    assert ctl("role", "revoke-permission", "r", "", "--from-key") == (
        0, "Permission of range [, <open ended> is revoked from role r\n", "")
    assert ctl("-w", "fields", "role", "revoke-permission", "r", "/p/", "--prefix") == (0, HDR_FIELDS, "")
    assert ctl("role", "revoke-permission", "r", "/p/", "--prefix") == (
        1, "", "Error: etcdserver: permission is not granted to the role\n")
    assert ctl("role", "revoke-permission", "r") == (128, "", (
        "Error: role revoke-permission command requires role name and key [endkey] as its argument\n"))
    assert ctl("role", "delete", "r") == (0, "Role r deleted\n", "")
    assert ctl("-w", "json", "role", "delete", "rj") == (0, HDR_JSON + "\n", "")
    assert ctl("-w", "table", "role", "delete", "rf") == (4, "", TABLE_ERR)
    assert ctl("role", "delete", "r") == (1, "", "Error: etcdserver: role name not found\n")
    assert ctl("role", "add")[0] == 128 and ctl("role", "get")[0] == 128 and ctl("role", "delete")[0] == 128


# -- globals: --user, --password, env, prompt, CURVE -----------------------------------------
def test_user_password_globals(ctl, srv, monkeypatch):
    srv.enable_auth()
    srv.store.auth_change({"op": "user_add", "name": "eve", "password": "e:pw"})
    assert ctl("--user", "root:rootpw", "put", "k", "v") == (0, "OK\n", "")
    assert srv.requests[-2]["op"] == "authenticate" and srv.requests[-2]["name"] == "root"
    assert srv.requests[-1]["token"]
    assert ctl("put", "k", "v", "--user", "root", "--password", "rootpw") == (0, "OK\n", "")  # hoisted
    assert ctl("--user", "eve:e:pw", "get", "k") == (1, "", "Error: etcdserver: permission denied\n")
    assert ctl("--user", "root:bad", "get", "k") == (
        2, "", "Error: etcdserver: authentication failed, invalid user ID or password\n")
    monkeypatch.setenv("QKVCTL_USER", "root")
    monkeypatch.setenv("QKVCTL_PASSWORD", "rootpw")
    assert ctl("get", "k", "--print-value-only") == (0, "v\n", "")
    monkeypatch.delenv("QKVCTL_PASSWORD")
    # no password and no terminal: an error, not a hang and not stdin's data
    rc, out, err = ctl("get", "k")
    assert rc == 1 and "password is missing" in err
    import getpass
    prompts = []
    monkeypatch.setattr(getpass, "getpass", lambda prompt="": prompts.append(prompt) or "rootpw")
    assert ctl("get", "k", "--print-value-only", tty=True) == (0, "v\n", "")
    assert prompts == ["Password: "]


def test_when_auth_is_off_a_user_is_harmless(ctl, srv):
    assert ctl("--user", "root:whatever", "put", "k", "v") == (0, "OK\n", "")
    assert "token" not in srv.requests[-1]


def test_server_key_and_key_file_flags(capsys, monkeypatch, tmp_path):
    pub, secret = zmq.auth.create_certificates(str(tmp_path), "me")
    os.chmod(secret, 0o600)
    with FakeServer(curve=True) as csrv:
        csrv.enable_auth()
        ctl = make_ctl(csrv, capsys, monkeypatch)
        assert ctl("--server-key", csrv.server_key, "--key-file", secret, "--user", "root:rootpw",
                   "put", "k", "v") == (0, "OK\n", "")
        assert csrv.requests[0]["key"] == zmq.auth.load_certificate(pub)[0].decode()
        monkeypatch.setenv("QKVCTL_SERVER_KEY", csrv.server_key)
        assert ctl("--user", "root:rootpw", "get", "k", "--print-value-only") == (0, "v\n", "")
        monkeypatch.delenv("QKVCTL_SERVER_KEY")
        assert ctl("--server-key", "short", "get", "k")[0] == 128
        rc, out, err = ctl("--command-timeout", "500ms", "get", "k")  # no key: NULL vs CURVE
        assert rc == 1 and err.startswith("Error: could not connect")
    with FakeServer(curve=True, impostor=True) as fake:
        ctl = make_ctl(fake, capsys, monkeypatch)
        rc, out, err = ctl("--command-timeout", "500ms", "--server-key", fake.server_key, "get", "k")
        assert rc == 1 and "CURVE handshake" in err and "impostor" in err, err
