"""The quorumkv wire protocol (SPEC.md), its codec and errors, and the client (client/).

Nothing here imports actors/ or nodes/ (tests/unit/test_pure_imports.py).
"""

VERSION = "0.1.0"  # the package version: qkvctl, qkvutl and the server report this one
