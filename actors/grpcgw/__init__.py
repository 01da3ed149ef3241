"""The gRPC gateway actor (issue 18): etcd v3's gRPC API over the node's native protocol.

See actor.py for the process, backend.py for the bridge every service uses.
"""
