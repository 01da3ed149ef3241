"""The Cluster and Maintenance services' conversions (actors/grpcgw/cluster.py,
maintenance.py), without a node: etcd's requests -> native ops, native replies -> etcd's
messages, and the refusals made before any native call."""
from __future__ import annotations

import hashlib

import grpc
import pytest

from actors.consensus.actor import grpc_urls
from actors.grpcgw import cluster, maintenance
from actors.grpcgw.backend import Backend
from protocol.etcdpb import rpc_pb2
from protocol.requests import Limits, normalize_request
from protocol.snapshot_file import MAGIC, SnapshotMeta, encode_header, verify

KEY_A = {"id": 7, "name": "n1", "peer_urls": ["tcp://10.0.0.1:2380"], "client_urls": ["tcp://10.0.0.1:7379"],
         "watch_urls": ["tcp://10.0.0.1:7381"], "grpc_urls": ["http://10.0.0.1:2379"], "is_learner": False,
         "peer_key": ""}


# --- Cluster --------------------------------------------------------------------------------
@pytest.mark.parametrize("given,want", [
    (["http://10.0.0.5:2380"], ["tcp://10.0.0.5:2380"]),
    (["tcp://h.example:2380/"], ["tcp://h.example:2380"]),
    (["http://[::1]:2380", "tcp://[::1]:2380"], ["tcp://[::1]:2380"]),
    (["http://a:1", "http://b:2"], ["tcp://a:1", "tcp://b:2"]),
])
def test_peer_urls_become_ours(given, want):
    assert cluster.peer_urls(given) == want


@pytest.mark.parametrize("given", [
    [], ["https://a:1"], ["unix://a:1"], ["http://a"], ["http://a:0"], ["http://a:70000"], ["http://a:1/path"],
    ["a:1"], ["http://a b:1"], ["http://" + "a" * 400 + ":1"], ["http://a:1"] * 17, ["http://a,b:1"],
])
def test_bad_peer_urls_get_etcds_error(given):
    with pytest.raises(cluster.Refused) as info:
        cluster.peer_urls(given)
    assert (info.value.code, info.value.message) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                     "etcdserver: given member URLs are invalid")


def test_member_add_is_named_after_its_peer_url():
    req = cluster.add_fields(rpc_pb2.MemberAddRequest(peerURLs=["http://10.0.0.9:2380"], isLearner=True))
    assert req == {"op": "member_add", "name": "10.0.0.9:2380", "peer_urls": ["tcp://10.0.0.9:2380"],
                   "is_learner": True}
    assert normalize_request(req, Limits())["name"] == "10.0.0.9:2380"  # a name our native op takes


def test_member_zero_is_not_found():
    with pytest.raises(cluster.Refused) as info:
        cluster.update_fields(rpc_pb2.MemberUpdateRequest(ID=0, peerURLs=["http://a:1"]))
    assert (info.value.code, info.value.message) == (grpc.StatusCode.NOT_FOUND, "etcdserver: member not found")
    assert cluster.update_fields(rpc_pb2.MemberUpdateRequest(ID=5, peerURLs=["http://a:1"])) == {
        "op": "member_update", "member_id": 5, "peer_urls": ["tcp://a:1"]}


def test_member_client_urls_are_the_grpc_urls():
    m = cluster.member_to_pb(KEY_A)
    assert (m.ID, m.name, list(m.peerURLs), list(m.clientURLs), m.isLearner) == (
        7, "n1", ["tcp://10.0.0.1:2380"], ["http://10.0.0.1:2379"], False)


def test_members_are_listed_in_id_order_as_etcds():
    reply = {"members": [{**KEY_A, "id": 9, "name": "n1"}, {**KEY_A, "id": 3, "name": "n2"},
                         {**KEY_A, "id": 2**63 + 1, "name": "n3"}, {**KEY_A, "id": 5, "name": "n4"}]}
    assert [m.name for m in cluster.members_to_pb(reply)] == ["n2", "n4", "n1", "n3"]


def test_a_member_without_grpc_lists_no_client_urls():
    m = cluster.member_to_pb({**KEY_A, "grpc_urls": []})
    assert m.name == "n1" and list(m.clientURLs) == []
    m = cluster.member_to_pb({k: v for k, v in KEY_A.items() if k != "grpc_urls"})  # an older member
    assert list(m.clientURLs) == []


def test_a_member_not_heard_from_is_etcds_unstarted():
    m = cluster.member_to_pb({**KEY_A, "client_urls": [], "grpc_urls": [], "is_learner": True})
    assert m.name == "" and list(m.clientURLs) == [] and m.isLearner and list(m.peerURLs) == KEY_A["peer_urls"]


@pytest.mark.parametrize("advertised,client,want", [
    ([], ["tcp://10.0.0.1:7379"], []),
    (["http://10.0.0.2:2379"], ["tcp://10.0.0.1:7379"], ["http://10.0.0.2:2379"]),
    (["http://0.0.0.0:2379", "https://[::]:2378"], ["tcp://10.0.0.1:7379"],
     ["http://10.0.0.1:2379", "https://10.0.0.1:2378"]),
    (["http://0.0.0.0:2379"], ["tcp://[fe80::1]:7379"], ["http://[fe80::1]:2379"]),
    (["http://0.0.0.0:2379"], ["tcp://0.0.0.0:7379"], ["http://0.0.0.0:2379"]),  # nothing better known
    (["http://0.0.0.0:2379"], [], ["http://0.0.0.0:2379"]),
])
def test_published_grpc_urls_replace_a_wildcard_host(advertised, client, want):
    assert grpc_urls(advertised, client) == want


# --- Maintenance ----------------------------------------------------------------------------
def test_alarms_filter_as_etcds_get():
    alarms = [{"member_id": 1, "alarm": "NOSPACE"}, {"member_id": 2, "alarm": "CORRUPT"},
              {"member_id": 3, "alarm": "SOMETHING_NEW"}]
    assert [(a.memberID, a.alarm) for a in maintenance.alarms_to_pb(alarms)] == [
        (1, rpc_pb2.NOSPACE), (2, rpc_pb2.CORRUPT)]
    assert [(a.memberID, a.alarm) for a in maintenance.alarms_to_pb(alarms, rpc_pb2.CORRUPT)] == [
        (2, rpc_pb2.CORRUPT)]
    assert maintenance.alarms_to_pb(None) == []


def test_deactivate_maps_to_one_exact_disarm_or_nothing():
    A = rpc_pb2.AlarmRequest
    assert maintenance.disarm_fields(A(action=A.DEACTIVATE, memberID=9, alarm=rpc_pb2.NOSPACE)) == {
        "op": "alarm_disarm", "member_id": 9, "alarm": "NOSPACE", "exact": True}
    assert maintenance.disarm_fields(A(action=A.DEACTIVATE, memberID=0, alarm=rpc_pb2.NOSPACE)) == {
        "op": "alarm_disarm", "member_id": 0, "alarm": "NOSPACE", "exact": True}  # member 0 only, as etcd
    assert maintenance.disarm_fields(A(action=A.DEACTIVATE, memberID=9, alarm=rpc_pb2.NONE)) is None
    assert maintenance.disarm_fields(A(action=A.DEACTIVATE, memberID=9, alarm=99)) is None


def test_activate_maps_to_alarm_activate_of_any_member():
    A = rpc_pb2.AlarmRequest
    for member in (0, 9, 2**64 - 1):
        assert maintenance.activate_fields(A(action=A.ACTIVATE, memberID=member, alarm=rpc_pb2.CORRUPT)) == {
            "op": "alarm_activate", "member_id": member, "alarm": "CORRUPT"}
    assert maintenance.activate_fields(A(action=A.ACTIVATE, memberID=9, alarm=rpc_pb2.NONE)) is None
    assert maintenance.activate_fields(A(action=A.ACTIVATE, memberID=9, alarm=99)) is None


def test_status_is_etcds():
    r = {"version": "0.1.0", "db_size": 100, "db_size_in_use": 60, "leader": 0, "raft_index": 9, "raft_term": 3,
         "raft_applied_index": 8, "is_learner": True, "errors": ["memberID:5 alarm:NOSPACE", "disk full: x"],
         "alarms": [{"member_id": 5, "alarm": "NOSPACE"}]}
    s = maintenance.status_response(r, rpc_pb2.ResponseHeader(member_id=5))
    assert s.version == maintenance.ETCD_VERSION and s.version.split(".")[:2] == ["3", "4"]
    assert (s.dbSize, s.dbSizeInUse, s.leader, s.raftIndex, s.raftTerm, s.raftAppliedIndex, s.isLearner) == (
        100, 60, 0, 9, 3, 8, True)
    assert list(s.errors) == ["etcdserver: no leader", "memberID:5 alarm:NOSPACE ", "disk full: x"]  # etcd's text
    assert list(maintenance.status_response({**r, "leader": 5, "errors": [], "alarms": []}, s.header).errors) == []


def test_hashkv_compact_revision_is_minus_one_until_compacted():
    assert maintenance.compact_revision({"compact_revision": 0}) == -1
    assert maintenance.compact_revision({"compact_revision": 7}) == 7


def test_hash_header_carries_the_hashed_revision():
    b = Backend.__new__(Backend)
    b.cluster_id, b.member_id, b.revision, b.raft_term = 1, 2, 0, 0
    h = maintenance.hash_header(b, {"header": {"cluster_id": 1, "member_id": 2, "revision": 50, "raft_term": 4},
                                    "hash": 2**40 + 7, "hash_revision": 42, "compact_revision": 3})
    assert (h.revision, h.raft_term, h.member_id) == (42, 4, 2)


def _snapshot_file(files: list[tuple[str, bytes]]) -> bytes:
    meta = SnapshotMeta(revision=7, compact_revision=2, applied_index=9, key_count=3, cluster_id=1, member_id=2,
                        created=1.5, version="0.1.0", files=[(n, len(b)) for n, b in files])
    body = encode_header(meta) + b"".join(b for _, b in files)
    return body + hashlib.sha256(body).digest()


@pytest.mark.parametrize("sizes,chunk", [(sizes, chunk) for sizes in ((0,), (1, 700), (5000, 3), (100_000, 123, 4567))
                                         for chunk in (1, 7, 512, 1 << 20) if chunk > 1 or sum(sizes) < 10_000])
def test_snapshot_stream_is_a_file_etcdctl_saves_and_we_restore(tmp_path, sizes, chunk):
    native = _snapshot_file([(f"{i:06d}.sst", bytes([i]) * n) for i, n in enumerate(sizes)])
    conv = maintenance.EtcdSnapshot(len(native))
    out, remaining = bytearray(), []
    for off in range(0, len(native), chunk):
        blob = conv.feed(native[off:off + chunk])
        if blob:
            out += blob
            remaining.append(conv.response(blob).remaining_bytes)
    assert len(out) % 512 == 32  # etcd's client: the stream is a bolt file (pages) + its SHA-256
    assert remaining[-1] == 0 and remaining == sorted(remaining, reverse=True) and conv.size == len(out)
    assert hashlib.sha256(out[:-32]).digest() == out[-32:]
    path = tmp_path / "s.snap"
    path.write_bytes(out)
    meta, _ = verify(str(path))  # qkvutl snapshot restore's check
    assert (meta.revision, meta.key_count, meta.files) == (7, 3, [(f"{i:06d}.sst", n) for i, n in enumerate(sizes)])
    assert out[-32 - sum(sizes):-32] == native[-32 - sum(sizes):-32]


def test_a_corrupted_or_odd_snapshot_stream_is_refused():
    native = bytearray(_snapshot_file([("a.sst", b"x" * 1000)]))
    native[-40] ^= 1
    conv = maintenance.EtcdSnapshot(len(native))
    with pytest.raises(maintenance.SnapshotError, match="SHA-256"):
        conv.feed(bytes(native))
    for bad in (b"NOTASNAP" + b"\0" * 100, MAGIC + (2**31).to_bytes(4, "big") + b"\0" * 100,
                MAGIC + (3).to_bytes(4, "big") + b"\xc1\xc1\xc1" + b"\0" * 40):
        with pytest.raises(maintenance.SnapshotError):
            maintenance.EtcdSnapshot(len(bad)).feed(bad)
    with pytest.raises(maintenance.SnapshotError):
        maintenance.EtcdSnapshot(10)
    conv = maintenance.EtcdSnapshot(100)
    with pytest.raises(maintenance.SnapshotError, match="longer"):
        conv.feed(b"x" * 101)
