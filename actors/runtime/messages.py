"""Type codes of the messages between the actors of one node (never on a public port).

Every internal frame is `codec.pack_msg(TYPE, body)`: version byte, type byte, msgpack
body. Bodies are arrays with the positions documented here. Every reply names the
request it answers (a request id, a ctx id or a log index), so a lost reply can be
asked for again.
"""

# gateway -> consensus (ROUTER at Endpoints.consensus)
PROPOSE = 1           # [[req_id, data], ...]   data = runtime/entry.py encode(...)
PROPOSE_ACK = 2       # [epoch, [accepted req_id, ...], [[req_id, error_wire], ...]]
READ_INDEX = 3        # [ctx_id]
READ_INDEX_RESP = 4   # [ctx_id, index, error_wire | None]
# storage -> consensus
FETCH = 5             # [after_index, durable_applied_index, max_entries]
ENTRIES = 6           # [[[index, term, type, data], ...], commit_index, term]
# anyone -> consensus
STATUS = 7            # [ctx_id]
STATUS_RESP = 8       # [ctx_id, {epoch, member_id, term, lead, state, commit, first_index, last_index}]

# gateway -> storage (ROUTER at Endpoints.storage)
READ = 20             # [[req_id, op, min_applied_index], ...]
READ_RESP = 21        # [[req_id, response | None, error_wire | None, revision, raft_term], ...]
STORAGE_STATUS = 22   # [ctx_id]
STORAGE_STATUS_RESP = 23  # [ctx_id, {applied_index, revision, compact_revision, db_size, db_size_in_use, raft_term}]

# gateway -> storage: client reads whose replies storage encodes itself
CLIENT_READ = 31      # [[req_id, op, min_applied_index, client_id, auth], ...]  auth: None or [user, auth_revision]
# storage -> gateway: finished client reply frames (codec.pack of the SPEC reply map);
# on the ROUTER for CLIENT_READ, and PUSHed to Endpoints.gateway_results for writes
CLIENT_REPLIES = 32   # [[req_id, frame, revision], ...]

# storage -> watch (PUSH to Endpoints.watch_events)
EVENTS = 40           # [[revision, [[type, kv, prev_kv], ...]], ...]  one message per applied batch

# actor -> supervisor (PUSH to Endpoints.supervisor)
READY = 50            # [role, pid]

# gateway -> consensus: cluster operations
MOVE_LEADER = 9       # [ctx_id, target_id]
MOVE_LEADER_RESP = 10  # [ctx_id, error_wire | None]

# consensus <-> storage: snapshots (paths are inside this node's data dir)
CHECKPOINT = 24       # [ctx_id]  make a consistent copy of the store
CHECKPOINT_RESP = 25  # [ctx_id, path | None, applied_index, error_wire | None]
INSTALL = 26          # [ctx_id, path]  replace the store by the snapshot at path
INSTALL_RESP = 27     # [ctx_id, applied_index, error_wire | None]
# gateway -> storage
HASH_KV = 28          # [ctx_id, revision]
HASH_KV_RESP = 29     # [ctx_id, {hash, revision, compact_revision} | None, error_wire | None]

# consensus <-> consensus of other members (ROUTER at --listen-peer-urls; every body
# starts with the sender's member id, which the fault layer filters on)
PEER_RAFT = 60        # [frm, [raft message wire, ...]]
PEER_FORWARD = 61     # [frm, [[req_id, data], ...]]  proposals from a follower to the leader
PEER_FORWARD_REJECT = 62  # [frm, [req_id, ...]]  the receiver is not the leader
PEER_HELLO = 63       # [frm, {name, client_urls, watch_urls, version}]
PEER_SNAP_CHUNK = 64  # [frm, snap_id, seq, relpath, offset, data, final, digest | None, snap message wire | None]
PEER_SNAP_ACK = 65    # [frm, snap_id, seq, status]  status: "ok" (chunk stored), "done" (installed), "failed"

# consensus -> storage (on consensus's DEALER to Endpoints.storage): leadership, sent at
# every change of leader or term and every 250 ms. ready_index = the last log index when
# this member became leader (its term's first entry): the leader's storage takes over
# lease expiry once it has applied that far (so it knows every lease and checkpoint).
LEADERSHIP = 33       # [is_leader, term, lead, lead_client_urls, ready_index]
# storage -> consensus (on storage's DEALER): entries only the server writes (lease
# expiry, lease checkpoints, auto-compaction's compact entries). Proposed only if this member still leads in `term`, never
# forwarded; no reply (storage sees the entries applied, or proposes again later).
LEASE_PROPOSE = 34    # [term, [data, ...]]  data as in PROPOSE
# gateway -> storage: `defragment` (maintenance). RocksDB compact_range of every column
# family runs in a storage thread (it releases the GIL), so storage keeps serving; the
# reply comes when it is done.
DEFRAG = 70           # [ctx_id]
DEFRAG_RESP = 71      # [ctx_id, {took_s, db_size_before, db_size_after} | None, error_wire | None]

# Membership (actors/consensus/actor.py). gateway -> consensus: member_add / _remove /
# _update / _promote; op = the normalized client op. A follower's consensus forwards it
# to the leader (PEER_MEMBER); the reply comes once the conf change entry is applied.
MEMBER = 90           # [ctx_id, op]
MEMBER_RESP = 91      # [ctx_id, {member?, members} | None, error_wire | None]
PEER_MEMBER = 92      # [frm, ctx, op]
PEER_MEMBER_RESP = 93  # [frm, ctx, result | None, error_wire | None]
# A node started with --initial-cluster-state existing asks a peer for the membership
# (its own id among it) before it starts; frm is 0 (it has no id yet). Replied on the
# peer ROUTER to the asking DEALER.
# With peer security the asking DEALER is a CURVE client pinned to that peer's key
# (--initial-cluster-keys) and its own key must be a member's (given at `member add`).
PEER_JOIN = 94        # [0]
PEER_JOIN_RESP = 95   # [cluster_id, [[id, name, peer_urls, is_learner, peer_key], ...]]
# To a member whose id was removed and that still talks to us: it stops.
PEER_REMOVED = 96     # [frm]

# Auth (actors/storage/auth/, issue 11). storage -> gateway (on the results PUSH) and
# storage -> watch (on the events PUSH): the whole auth state after every applied batch
# that changed it, and as the reply to AUTH_STATE_GET on storage's ROUTER.
AUTH_STATE = 35       # [auth_state_wire]
# storage -> gateway and watch, when `authenticate` entries applied; a receiver ignores
# grants older than --auth-token-ttl by wall clock (a replay after a storage restart).
AUTH_TOKEN = 36       # [[token_sha256_hex, user, issued_unix_s, key_z85 | None], ...]
AUTH_STATE_GET = 37   # [ctx_id]  gateway/watch -> storage; answered with AUTH_STATE
