"""Issue 11: private files, a private run dir, fault injection only on request, and no
plain text listener beyond loopback unless asked for (nodes/perms.py, nodes/config.py)."""
from __future__ import annotations

import json
import os
import pwd
import stat

import pytest

from nodes.config import ConfigError, is_loopback_url, load_config
from nodes.perms import UnsafeDirError, make_private_dir, private_umask, secure_data_dir


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# --- listening beyond loopback -------------------------------------------------------------
@pytest.mark.parametrize("url, loopback", [
    ("tcp://127.0.0.1:1", True), ("tcp://127.8.9.10:1", True), ("tcp://[::1]:1", True),
    ("tcp://localhost:1", True), ("tcp://LOCALHOST:1", True), ("ipc:///tmp/x.ipc", True),
    ("tcp://0.0.0.0:1", False), ("tcp://*:1", False), ("tcp://[::]:1", False),
    ("tcp://10.0.0.1:1", False), ("tcp://eth0:1", False), ("tcp://db.example.com:1", False),
])
def test_which_urls_count_as_loopback(url, loopback):
    assert is_loopback_url(url) is loopback


def test_defaults_listen_on_loopback_and_need_no_security():
    cfg = load_config({}, env={})
    assert not cfg.insecure_peer and not cfg.insecure_client and not cfg.test_fault_injection
    assert cfg.peer_key_file == cfg.client_key_file == ""


@pytest.fixture
def key_file(tmp_path):
    from actors.runtime import security

    _, secret = security.generate(str(tmp_path), "default")
    return secret, security.load_keypair(secret)[0].decode()


def test_a_non_loopback_peer_url_needs_a_key_or_insecure_peer(key_file):
    flags = {"listen-peer-urls": "tcp://0.0.0.0:7380", "initial-advertise-peer-urls": "tcp://10.0.0.1:7380"}
    with pytest.raises(ConfigError) as err:
        load_config(flags, env={})
    msg = str(err.value)
    assert "tcp://0.0.0.0:7380" in msg and "--listen-peer-urls" in msg
    assert "--peer-key-file" in msg and "--insecure-peer" in msg and "\n" not in msg
    assert load_config({**flags, "insecure-peer": True}, env={}).insecure_peer
    assert load_config(flags, env={"QKV_INSECURE_PEER": "true"}).insecure_peer
    secret, public = key_file
    assert load_config({**flags, "peer-key-file": secret, "initial-cluster-keys": f"default={public}"},
                       env={}).peer_key_file
    # client security does not stand in for peer security
    with pytest.raises(ConfigError, match="--insecure-peer"):
        load_config({**flags, "insecure-client": True, "client-key-file": "c.key_secret"}, env={})


@pytest.mark.parametrize("flag", ["listen-client-urls", "listen-watch-urls"])
def test_a_non_loopback_client_or_watch_url_needs_a_key_or_insecure_client(flag, key_file):
    flags = {flag: "tcp://127.0.0.1:7001,tcp://*:7002"}
    with pytest.raises(ConfigError) as err:
        load_config(flags, env={})
    msg = str(err.value)
    assert f"--{flag}" in msg and "tcp://*:7002" in msg
    assert "--client-key-file" in msg and "--insecure-client" in msg
    assert load_config({**flags, "insecure-client": True}, env={}).insecure_client
    assert load_config({**flags, "client-key-file": key_file[0]}, env={}).client_key_file
    with pytest.raises(ConfigError, match="--insecure-client"):
        load_config({**flags, "insecure-peer": True}, env={})


def test_the_test_fault_injection_flag_reads_from_the_environment():
    assert load_config({}, env={"QKV_TEST_FAULT_INJECTION": "1"}).test_fault_injection
    assert not load_config({}, env={"QKV_TEST_FAULT_INJECTION": "0"}).test_fault_injection


# --- the run dir --------------------------------------------------------------------------
def test_the_run_dir_is_created_private(tmp_path):
    path = str(tmp_path / "run")
    make_private_dir(path)
    assert mode(path) == 0o700


def test_a_run_dir_writable_by_others_is_refused(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    os.chmod(path, 0o777)
    with pytest.raises(UnsafeDirError) as err:
        make_private_dir(str(path))
    assert str(path) in str(err.value) and "0777" in str(err.value)
    assert mode(path) == 0o777  # left alone: someone else may have put things in it


def test_an_own_run_dir_only_readable_by_others_is_made_private(tmp_path):
    path = tmp_path / "run"
    path.mkdir()
    os.chmod(path, 0o755)  # what an older qkv left behind
    make_private_dir(str(path))
    assert mode(path) == 0o700


def test_a_symlinked_run_dir_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o700)
    link = tmp_path / "run"
    link.symlink_to(target)
    with pytest.raises(UnsafeDirError, match="symlink") as err:
        make_private_dir(str(link))
    assert str(link) in str(err.value)


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "run"
    path.write_text("")
    with pytest.raises(UnsafeDirError, match="not a directory"):
        make_private_dir(str(path))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")
def test_a_run_dir_owned_by_another_user_is_refused(tmp_path):
    nobody = pwd.getpwnam("nobody").pw_uid
    path = tmp_path / "run"
    path.mkdir(mode=0o700)
    os.chown(path, nobody, -1)
    with pytest.raises(UnsafeDirError) as err:
        make_private_dir(str(path))
    assert str(path) in str(err.value) and f"uid {nobody}" in str(err.value)


# --- the data dir -------------------------------------------------------------------------
def test_a_new_data_dir_is_private(tmp_path):
    path = str(tmp_path / "a" / "n1.qkv")
    assert secure_data_dir(path) == (None, 0)
    assert mode(path) == 0o700


def test_an_old_data_dir_is_made_private_without_following_symlinks(tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not ours to change")
    os.chmod(outside, 0o644)
    data = tmp_path / "n1.qkv"
    (data / "storage").mkdir(parents=True)
    (data / "member.json").write_text("{}")
    (data / "storage" / "000001.sst").write_text("x")
    (data / "storage" / "link").symlink_to(outside)
    os.chmod(data, 0o755)
    os.chmod(data / "storage", 0o775)
    os.chmod(data / "member.json", 0o644)
    os.chmod(data / "storage" / "000001.sst", 0o600)  # already private: not counted
    old, fixed = secure_data_dir(str(data))
    assert old == 0o755 and fixed == 2
    assert mode(data) == 0o700 and mode(data / "storage") == 0o700
    assert mode(data / "member.json") == 0o600 and mode(data / "storage" / "000001.sst") == 0o600
    assert mode(outside) == 0o644
    assert secure_data_dir(str(data)) == (None, 0)  # nothing left to fix


def test_private_umask_is_restored(tmp_path):
    before = os.umask(0o022)
    try:
        with private_umask():
            (tmp_path / "f").write_text("x")
        (tmp_path / "g").write_text("x")
    finally:
        os.umask(before)
    assert mode(tmp_path / "f") == 0o600 and mode(tmp_path / "g") == 0o644


def test_a_snapshot_part_file_is_private_even_if_it_existed(tmp_path):
    from protocol.client.snapshot import _open_private

    part = tmp_path / "snap.db.part"
    part.write_text("old")
    os.chmod(part, 0o644)
    with _open_private(str(part)) as f:
        f.write(b"new")
    assert mode(part) == 0o600 and part.read_bytes() == b"new"


# --- fault injection only on request -----------------------------------------------------
def test_faults_file_is_ignored_unless_enabled(tmp_path):
    from actors.consensus.transport import Faults

    path = tmp_path / "faults.json"
    path.write_text(json.dumps({"drop_to": [1, 2], "drop_from": [3]}))
    off = Faults(str(path), enabled=False)
    off.refresh()
    assert off.drop_to == off.drop_from == frozenset()
    on = Faults(str(path), enabled=True)
    on.refresh()
    assert on.drop_to == {1, 2} and on.drop_from == {3}


def test_failpoints_are_armed_only_when_enabled():
    from actors.runtime import failpoints

    try:
        failpoints.configure(False, env={"QKV_FAILPOINTS": "unit_test_point"})
        failpoints.failpoint("unit_test_point")  # would SIGKILL this process if armed
        assert failpoints._POINTS == {}
        failpoints.configure(True, env={"QKV_FAILPOINTS": "unit_test_point@3,other"})
        assert failpoints._POINTS == {"unit_test_point": 3, "other": 1}
    finally:
        failpoints.configure(False)
    assert failpoints._POINTS == {}


def test_listen_metrics_urls_is_http_and_may_be_off():
    from nodes.config import ConfigError, load_config

    assert load_config({}, env={}).listen_metrics_urls == ["http://127.0.0.1:7382"]
    assert load_config({"listen-metrics-urls": ""}, env={}).listen_metrics_urls == []
    cfg = load_config({"listen-metrics-urls": "http://0.0.0.0:9100,http://[::1]:9101"}, env={})
    assert cfg.listen_metrics_urls == ["http://0.0.0.0:9100", "http://[::1]:9101"]  # no security needed
    for bad in ("tcp://127.0.0.1:1", "http://127.0.0.1", "http://127.0.0.1:1/metrics", "https://127.0.0.1:1"):
        with pytest.raises(ConfigError, match="--listen-metrics-urls"):
            load_config({"listen-metrics-urls": bad}, env={})
