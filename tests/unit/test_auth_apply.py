"""The MVCC store applies and enforces auth (issue 11): auth changes from the log, the
check of every entry before it runs (with the auth it carries), the server's own
entries, persistence in the same write, and auth_old_revision."""
from __future__ import annotations

from mvcc_kv import n

from actors.storage.auth import hash_password
from actors.storage.mvcc import MemoryBackend, MVCCStore
from actors.storage.mvcc.store import SERVER

HASH = hash_password("pw", salt=b"s" * 16)


def apply(store, op, auth=None):
    (res,) = store.apply([(store.applied_index + 1, op, auth)])
    return res


def code(res):
    return None if res.error is None else res.error.code


def auth_op(op, **fields):
    return {"op": op, **fields}


def enabled_store(backend=None):
    store = MVCCStore(backend or MemoryBackend())
    for op in (auth_op("user_add", name="root", password=HASH, no_password=False, public_key=None),
               auth_op("user_grant_role", name="root", role="root"),
               auth_op("role_add", name="w"),
               auth_op("role_grant_permission", name="w",
                       perm={"perm_type": "READWRITE", "key": b"/w/", "range_end": b"/w0"}),
               auth_op("user_add", name="u", password=HASH, no_password=False, public_key=None),
               auth_op("user_grant_role", name="u", role="w"),
               auth_op("auth_enable")):
        assert code(apply(store, op)) is None, op
    return store


def test_entries_are_checked_before_they_run():
    store = enabled_store()
    rev = store.auth.revision
    assert code(apply(store, n("put", key=b"/w/1", value=b"v"), ("u", rev))) is None
    before = store.current_revision
    assert code(apply(store, n("put", key=b"/x", value=b"v"), ("u", rev))) == "permission_denied"
    assert code(apply(store, n("put", key=b"/w/2", value=b"v"))) == "user_empty"
    assert store.current_revision == before  # refused entries changed nothing


def test_an_entry_authorized_under_an_older_auth_revision_is_refused():
    """The gateway checked under revision R; the auth state changed before the entry
    applied: auth_old_revision, whatever the change (etcd's rule)."""
    store = enabled_store()
    old = store.auth.revision
    assert code(apply(store, auth_op("role_add", name="other"), ("root", old))) is None
    assert store.auth.revision == old + 1
    assert code(apply(store, n("put", key=b"/w/1", value=b"v"), ("u", old))) == "auth_old_revision"
    assert code(apply(store, n("put", key=b"/w/1", value=b"v"), ("u", old + 1))) is None
    # the same within one batch: a revoke followed by a write stamped before it
    i = store.applied_index
    rev = store.auth.revision
    results = store.apply([
        (i + 1, auth_op("role_revoke_permission", name="w", key=b"/w/", range_end=b"/w0"), ("root", rev)),
        (i + 2, n("put", key=b"/w/2", value=b"v"), ("u", rev)),
        (i + 3, n("put", key=b"/w/2", value=b"v"), ("u", rev + 1)),
    ])
    assert [code(r) for r in results] == [None, "auth_old_revision", "permission_denied"]


def test_server_entries_are_not_checked_and_client_ones_are():
    store = enabled_store()
    rev = store.current_revision
    assert code(apply(store, {"op": "compact", "revision": rev, "physical": False}, SERVER)) is None
    assert code(apply(store, {"op": "lease_expire", "id": 7}, SERVER)) == "lease_not_found"
    assert code(apply(store, n("put", key=b"/x", value=b"v"), None)) == "user_empty"


def test_lease_keys_are_those_the_batch_left():
    """A put with a lease needs WRITE on the keys the lease already holds, counting the
    entries before it in the same batch (the check sees the batch's own writes)."""
    store = enabled_store()
    rev = store.auth.revision
    assert code(apply(store, n("lease_grant", ID=5, ttl=100), ("root", rev))) is None
    i = store.applied_index
    results = store.apply([
        (i + 1, n("put", key=b"/x", value=b"v", lease=5), ("root", rev)),
        (i + 2, n("put", key=b"/w/1", value=b"v", lease=5), ("u", rev)),
        (i + 3, n("lease_revoke", ID=5), ("u", rev)),
    ])
    assert [code(r) for r in results] == [None, "permission_denied", "permission_denied"]
    assert code(apply(store, n("lease_revoke", ID=5), ("root", rev))) is None


def test_the_auth_state_is_persisted_with_the_batch(kv_backend):
    backend = kv_backend(None)
    store = enabled_store(backend)
    wire = store.auth.to_wire()
    backend = kv_backend(backend)  # reopen
    again = MVCCStore(backend)
    assert again.auth.to_wire() == wire and again.auth.enabled
    rev = again.auth.revision
    assert code(apply(again, n("put", key=b"/x", value=b"v"), ("u", rev))) == "permission_denied"


def test_read_checks():
    store = enabled_store()
    rev = store.auth.revision
    store.check_read(("u", rev), n("range", key=b"/w/1"))
    for auth, op, want in ((("u", rev), n("range", key=b"/x"), "permission_denied"),
                           (None, n("range", key=b"/w/1"), "user_empty"),
                           (("u", rev - 1), n("range", key=b"/w/1"), "auth_old_revision"),
                           (("u", rev), n("lease_leases"), None)):
        try:
            store.check_read(auth, op)
            got = None
        except Exception as exc:  # QkvError
            got = exc.code
        assert got == want, (op, got)
