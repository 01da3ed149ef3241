"""deploy/ for systemd: the unit asks for what the node does (Type=notify, a watchdog it
can meet), runs as the sysusers.d user in a sandbox, keeps its data in its
StateDirectory; the 3-node example's files load into one consistent cluster. And the
supervisor's pure parts of the systemd protocol (nodes/supervisor.py): when it pings the
watchdog, what STATUS= says, and the HEARTBEAT message that feeds them."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

import msgpack
import pytest

from actors.runtime import messages as M
from actors.runtime import security, wire
from actors.runtime.actor import HEARTBEAT_INTERVAL_S
from nodes import supervisor as S
from nodes.config import load_config
from protocol.errors import Malformed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
EXAMPLE = DEPLOY / "cluster-example"
INSTALLED = "/opt/quorumkv/"  # where the unit expects the code (its ExecStart)


def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values in order]}} (keys may repeat)."""
    out: dict[str, dict[str, list[str]]] = {}
    section = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            out.setdefault(section, {})
            continue
        assert section is not None and "=" in line, f"{path.name}: {raw!r}"
        key, _, value = line.partition("=")
        out[section].setdefault(key.strip(), []).append(value.strip())
    return out


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)(s|min|ms)?", value)
    assert m, value
    return int(m.group(1)) * {"s": 1, None: 1, "min": 60, "ms": 0.001}[m.group(2)]


UNIT = parse_unit(DEPLOY / "qkv.service")
SERVICE = {k: v[-1] for k, v in UNIT["Service"].items()}


def test_unit_is_notify_with_a_watchdog_the_node_can_meet():
    assert SERVICE["Type"] == "notify" and SERVICE["NotifyAccess"] == "main"
    watchdog = _seconds(SERVICE["WatchdogSec"])
    # The node pings every half of it while healthy; it calls an actor stuck after
    # HEARTBEAT_STALE_S; the interval must leave room for both, and for an actor restart.
    assert watchdog >= 5 * S.HEARTBEAT_STALE_S
    assert S.HEARTBEAT_STALE_S >= 4 * HEARTBEAT_INTERVAL_S
    assert SERVICE["Restart"] == "on-failure"  # a watchdog timeout counts as a failure


def test_unit_runs_as_the_sysusers_user_in_its_state_directory():
    user = SERVICE["User"]
    assert user == SERVICE["Group"] == "qkv"
    entries = [line.split() for line in (DEPLOY / "qkv.sysusers").read_text().splitlines()
               if line.strip() and not line.lstrip().startswith("#")]
    assert any(e[0] == "u" and e[1] == user for e in entries), "the sysusers.d file must create User="
    assert SERVICE["StateDirectory"] == "qkv" and SERVICE["StateDirectoryMode"] == "0700"
    state = "/var/lib/" + SERVICE["StateDirectory"] + "/"
    for toml in [DEPLOY / "qkv.toml.example", *sorted(EXAMPLE.glob("*.toml"))]:
        data_dir = re.search(r"^data-dir\s*=\s*['\"]([^'\"]+)", toml.read_text(), re.M)
        assert data_dir and data_dir.group(1).startswith(state), f"{toml.name}: data-dir outside {state}"


def test_unit_sandboxing():
    for key, value in {"ProtectSystem": "strict", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                       "ProtectHome": "yes", "CapabilityBoundingSet": "", "UMask": "0077"}.items():
        assert SERVICE.get(key) == value, key
    assert int(SERVICE["LimitNOFILE"]) >= 65536
    assert "AF_UNIX" in SERVICE["RestrictAddressFamilies"]  # ipc between actors, sd_notify


def test_unit_documentation_points_at_files_we_ship():
    docs = UNIT["Unit"]["Documentation"][-1].split()
    assert docs
    for url in docs:
        assert url.startswith(("file:", "https:", "man:")) and "example.invalid" not in url, url
        if url.startswith("file:" + INSTALLED):
            assert (ROOT / url[len("file:" + INSTALLED):]).is_file(), url


def test_sysusers_file_parses(tmp_path):
    sysusers = subprocess.run(["sh", "-c", "command -v systemd-sysusers"], capture_output=True, text=True).stdout.strip()
    if not sysusers:
        pytest.skip("systemd-sysusers is not installed: deploy/qkv.sysusers not dry-run")
    (tmp_path / "etc").mkdir()
    proc = subprocess.run([sysusers, "--dry-run", f"--root={tmp_path}", str(DEPLOY / "qkv.sysusers")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Creating user 'qkv'" in proc.stderr + proc.stdout, proc.stderr


def test_cluster_example_is_one_consistent_cluster(tmp_path):
    """The three files, with real keys in place of the <...> and the key files in tmp_path,
    load (flags > env > file, as `qkv` does) into three members of one cluster."""
    files = sorted(EXAMPLE.glob("n*.toml"))
    assert [f.name for f in files] == ["n1.toml", "n2.toml", "n3.toml"]
    keys_dir = tmp_path / "keys"
    for name in ("n1", "n2", "n3", "client"):
        security.generate(str(keys_dir), name)
    public = {n: security.load_keypair(str(keys_dir / f"{n}.key_secret"))[0].decode() for n in ("n1", "n2", "n3")}
    configs = []
    for f in files:
        text = f.read_text().replace("/etc/qkv/keys", str(keys_dir))
        text = re.sub(r"<public key of (n\d)>", lambda m: public[m.group(1)], text)
        assert "<public key of" not in text
        local = tmp_path / f.name
        local.write_text(text)
        configs.append(load_config({}, env={}, config_file=str(local)))
    assert [c.name for c in configs] == ["n1", "n2", "n3"]
    assert len({c.cluster_id for c in configs}) == 1 and len({c.member_id for c in configs}) == 3
    assert len({c.initial_cluster for c in configs}) == 1 and len({c.initial_cluster_keys for c in configs}) == 1
    for i, c in enumerate(configs, 1):
        host = f"10.0.0.{i}"
        assert c.peer_key_file and c.client_key_file  # beyond loopback: security on
        assert f"{c.name}={c.listen_peer_urls[0]}" in c.initial_cluster.split(",")
        for urls in (c.listen_peer_urls, c.listen_client_urls, c.listen_watch_urls):
            assert all(f"//{host}:" in u for u in urls), urls
        assert c.initial_cluster_state == "new"


# --- the supervisor's side (nodes/supervisor.py) ----------------------------------------
@pytest.mark.parametrize("env, pid, expected", [
    ({}, 10, None),
    ({"WATCHDOG_USEC": "1000000"}, 10, 0.5),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),  # meant for another process
    ({"WATCHDOG_USEC": "0"}, 10, None),
    ({"WATCHDOG_USEC": "-5"}, 10, None),
    ({"WATCHDOG_USEC": "soon"}, 10, None),
    ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "x"}, 10, None),
])
def test_watchdog_interval(env, pid, expected):
    assert S.watchdog_interval_s(env, pid) == expected


class _Proc:
    pid = 1


def _children(now: float) -> dict[str, S.Child]:
    children = {role: S.Child(role, proc=_Proc(), ready=True, last_heartbeat=now)  # type: ignore[arg-type]
                for role in S.ROLES}
    children["consensus"].status = {"state": "leader", "term": 3, "leader": 7, "commit": 1045}
    children["storage"].status = {"applied_index": 1042, "revision": 1000, "alarms": []}
    return children


def test_healthy_node_status_line():
    children = _children(100.0)
    assert S.node_problems(children, 100.0 + S.HEARTBEAT_STALE_S - 0.01) == []
    assert S.status_text(children, [], True) == "leader, term 3, applied 1042, revision 1000, alarms: none"
    children["consensus"].status = {"state": "follower", "term": 4, "leader": 0, "commit": 1045}
    children["storage"].status = {"applied_index": 1042, "revision": 1000, "alarms": ["CORRUPT", "NOSPACE"]}
    assert (S.status_text(children, [], True)
            == "follower (no leader), term 4, applied 1042, revision 1000, alarms: CORRUPT, NOSPACE")


def test_unhealthy_node_names_each_actor():
    now = 100.0
    children = _children(now)
    children["storage"].last_heartbeat = now - S.HEARTBEAT_STALE_S  # silent too long: wedged or stopped
    children["gateway"].proc = None  # died, to be restarted
    children["watch"].ready = False  # restarted, not ready yet
    problems = S.node_problems(children, now)
    assert problems == ["storage not answering", "watch starting", "gateway restarting"]
    assert S.status_text(children, problems, True) == \
        "unhealthy: storage not answering, watch starting, gateway restarting"
    assert S.status_text(children, problems, False).startswith("starting: ")


def test_heartbeat_message_is_small_and_checked():
    good = M.Heartbeat("storage", 42, {"applied_index": 1, "revision": 1, "alarms": ["NOSPACE"]})
    assert wire.decode(wire.pack(good)) == good
    for bad in (["storage", 42, {"applied_index": 1, "bogus": 1}],  # unknown key
                ["storage", 42, {"alarms": ["NOSPACE"] * 17}],  # too many alarms
                ["storage", 42, {"alarms": ["x" * 33]}],
                ["storage", 42, {"term": -1}],
                ["storage", 42, {"state": True}],
                ["intruder", 42, {}],
                ["storage", 0, {}],
                ["storage", 42]):
        with pytest.raises(Malformed):
            wire.decode(bytes((wire.VERSION, M.HEARTBEAT)) + msgpack.packb(bad))
    # The supervisor's PULL takes READY and HEARTBEAT only.
    with pytest.raises(Malformed):
        wire.decode(wire.pack(M.Status(1)), S._READY_TYPES)
