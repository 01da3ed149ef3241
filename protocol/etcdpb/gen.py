"""Regenerate etcd 3.4's gRPC definitions (``make protos``; the output is committed, so an
install needs neither protoc nor Debian's golang-etcd-server-dev).

Input: the .proto files of Debian's ``golang-etcd-server-dev`` 3.4 (or ``--src DIR``, an
etcd source tree). Each is copied here with only what Python does not need removed: the
gogoproto import and options (Go code generation) and the ``google.api.http`` options
(etcd's HTTP/JSON gateway). Packages, services, messages, field names and numbers are
etcd's, untouched: the wire is etcd's. Imports are rewritten to this package's paths so
that the generated modules import each other as ``protocol.etcdpb.*``.
"""
from __future__ import annotations

import argparse
import os
import re
import sys

SRC = "/usr/share/gocode/src/go.etcd.io/etcd"
FILES = {  # our name: etcd's path under SRC
    "kv.proto": "mvcc/mvccpb/kv.proto",
    "auth.proto": "auth/authpb/auth.proto",
    "rpc.proto": "etcdserver/etcdserverpb/rpc.proto",
    "v3lock.proto": "etcdserver/api/v3lock/v3lockpb/v3lock.proto",
    "v3election.proto": "etcdserver/api/v3election/v3electionpb/v3election.proto",
}
IMPORTS = {f"etcd/{path}": f"protocol/etcdpb/{name}" for name, path in FILES.items()}
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def strip(text: str) -> str:
    text = re.sub(r'import "(gogoproto/gogo|google/api/annotations)\.proto";\n', "", text)
    text = re.sub(r"option \(gogoproto\.[a-z_]+\) = [a-z]+;\n", "", text)
    text = re.sub(r"\s*\[\(gogoproto\.[^\]]*\]", "", text)
    # rpc X(..) returns (..) { option (google.api.http) = { ... }; }  ->  {}
    text = re.sub(r"\{\s*option \(google\.api\.http\) = \{[^{}]*(\{[^{}]*\}[^{}]*)*\};\s*\}", "{}", text)
    for old, new in IMPORTS.items():
        text = text.replace(f'import "{old}";', f'import "{new}";')
    if "gogoproto" in text or "google.api" in text:
        raise SystemExit("an option was left: update gen.py")
    return text


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--src", default=SRC)
    args = ap.parse_args()
    for name, path in FILES.items():
        with open(os.path.join(args.src, path)) as f:
            text = strip(f.read())
        with open(os.path.join(HERE, name), "w") as f:
            f.write(f"// etcd 3.4's {path}, gogoproto and google.api options removed by gen.py.\n" + text)
    from grpc_tools import protoc  # the bench extra's grpcio-tools
    import grpc_tools
    include = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    protos = [f"protocol/etcdpb/{name}" for name in FILES]
    rc = protoc.main(["protoc", f"-I{ROOT}", f"-I{include}", f"--python_out={ROOT}", f"--pyi_out={ROOT}",
                      f"--grpc_python_out={ROOT}", *protos])
    return int(rc)


if __name__ == "__main__":
    sys.exit(main())
