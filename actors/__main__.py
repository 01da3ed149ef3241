"""`python -m actors <role> --config <file>`: run one actor of a node.

The supervisor starts each actor this way (never by fork), so `ps` shows the role.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from actors.runtime import failpoints
from nodes.config import Config
from nodes.endpoints import Endpoints, run_dir_for
from nodes.perms import PRIVATE_UMASK

ROLES = {
    "consensus": "actors.consensus.actor:ConsensusActor",
    "storage": "actors.storage.actor:StorageActor",
    "gateway": "actors.gateway.actor:GatewayActor",
    "watch": "actors.watch.actor:WatchActor",
    "metrics": "actors.metrics.actor:MetricsActor",  # only with --listen-metrics-urls
    "grpc": "actors.grpcgw.actor:GrpcActor",  # only with --listen-grpc-urls
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m actors")
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--config", required=True, help="the node's config, as JSON, written by the supervisor")
    args = parser.parse_args(argv)
    os.umask(PRIVATE_UMASK)  # as the supervisor's, also when an actor is started by hand
    with open(args.config) as f:
        cfg = Config.from_json(f.read())
    failpoints.configure(cfg.test_fault_injection)  # QKV_FAILPOINTS only with --test-fault-injection
    module_name, class_name = ROLES[args.role].split(":")
    actor_cls = getattr(importlib.import_module(module_name), class_name)
    return actor_cls(cfg, Endpoints(run_dir_for(cfg.data_dir))).run()


if __name__ == "__main__":
    sys.exit(main())
