"""Node configuration: flags, `QKV_*` environment variables and a TOML config file.

Precedence: command-line flag > environment (`QKV_DATA_DIR` for `--data-dir`) > config
file (`--config-file`, TOML with the flags' names as keys, e.g. `data-dir = "x"`) >
default. Every value is validated here, once; a bad value is refused with a one-line
`ConfigError` naming the flag. The validated `Config` is handed to every actor as JSON.
"""
from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import json
import os
import tomllib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

from protocol import VERSION  # noqa: F401  (re-exported: one version for the server, qkvctl, qkvutl)


class ConfigError(Exception):
    """A flag value that cannot be used; the message names the flag."""


def _positive_int(flag: str, raw: Any, minimum: int = 1, maximum: int | None = None) -> int:
    if isinstance(raw, bool):
        raise ConfigError(f"invalid {flag} {raw!r}: must be an integer")
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"invalid {flag} {raw!r}: must be an integer") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"invalid {flag} {raw!r}: must be {bound}")
    return value


def _listen_url(flag: str, raw: str, scheme: str, example: str) -> str:
    """`scheme://host:port`, normalized (an IPv6 host in brackets); anything else refused."""
    raw = raw.strip()
    parts = urlsplit(raw)
    if parts.scheme != scheme or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ConfigError(f"invalid {flag} {raw!r}: must be {example}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        raise ConfigError(f"invalid {flag} {raw!r}: the URL needs a port (1-65535)")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    return f"{scheme}://{host}:{port}"


def _zmq_url(flag: str, raw: str) -> str:
    return _listen_url(flag, raw, "tcp", "a ZeroMQ URL like tcp://127.0.0.1:7379")


def _http_url(flag: str, raw: str) -> str:
    return _listen_url(flag, raw, "http", "an HTTP URL like http://127.0.0.1:7382")


def _http_url_list(flag: str, raw: Any) -> list[str]:
    """HTTP URLs; an empty value means none (the metrics listener is off)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return [_http_url(flag, str(item)) for item in items if str(item).strip()]


def _grpc_url_list(flag: str, raw: Any) -> list[str]:
    """etcd's client URLs for the gRPC gateway: http:// (plain) or https:// (TLS with
    --cert-file/--key-file); an empty value means none (the gateway is off)."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = []
    for item in (str(i) for i in items if str(i).strip()):
        scheme = "https" if item.strip().startswith("https://") else "http"
        urls.append(_listen_url(flag, item, scheme, "an http:// or https:// URL like http://127.0.0.1:2379"))
    return urls


def _url_list(flag: str, raw: Any) -> list[str]:
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = [_zmq_url(flag, str(item)) for item in items if str(item).strip()]
    if not urls:
        raise ConfigError(f"invalid {flag} {raw!r}: at least one URL is needed")
    return urls


def _choice(flag: str, raw: Any, choices: tuple[str, ...]) -> str:
    value = str(raw).strip().lower()
    if value not in choices:
        raise ConfigError(f"invalid {flag} {raw!r}: must be one of {', '.join(choices)}")
    return value


# etcd's spellings (debug, info, warn, error, panic, fatal) and Python's "warning"; the
# value kept is the one actors/runtime/log.py knows (panic and fatal log errors only).
_LOG_LEVELS = {"debug": "debug", "info": "info", "warn": "warning", "warning": "warning",
               "error": "error", "panic": "error", "fatal": "error"}


def _log_level(flag: str, raw: Any) -> str:
    value = str(raw).strip().lower()
    if value not in _LOG_LEVELS:
        raise ConfigError(f"invalid {flag} {raw!r}: must be one of debug, info, warn, error, panic, fatal")
    return _LOG_LEVELS[value]


def _duration(flag: str, raw: Any) -> float:
    from actors.storage.compactor import parse_duration

    try:
        return parse_duration(str(raw))
    except ValueError:
        raise ConfigError(f"invalid {flag} {raw!r}: must be a duration like 60s, 500ms or 1h") from None


def _bool(flag: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    value = str(raw).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"invalid {flag} {raw!r}: must be true or false")


def _name(flag: str, raw: Any) -> str:
    value = str(raw).strip()
    if not value or any(c in value for c in ",=/ \t\n"):
        raise ConfigError(f"invalid {flag} {raw!r}: must be non-empty, without ',', '=', '/' or spaces")
    return value


_ID_MASK = (1 << 63) - 1  # ids fit in an int64 as well as a uint64 (the Raft wire uses int64)


def member_id(token: str, name: str) -> int:
    """A member's id: derived from the cluster token and its name, as stable as etcd's."""
    digest = hashlib.sha256(f"{token}/{name}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") & _ID_MASK) or 1


def new_member_id(cluster: int, name: str, peer_urls: list[str], now_ns: int) -> int:
    """The id of a member added at runtime (etcd: peer URLs + time): a name re-added after
    its removal gets a new id, so the old one can never come back."""
    text = f"{cluster}/{name}/{','.join(sorted(peer_urls))}/{now_ns}"
    return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & _ID_MASK) or 1


def cluster_id(token: str, member_ids: list[int]) -> int:
    text = token + "/" + ",".join(str(m) for m in sorted(member_ids))
    return (int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & _ID_MASK) or 1


@dataclass(frozen=True)
class Member:
    name: str
    id: int
    peer_urls: list[str]
    peer_key: str = ""  # Z85 CURVE public key ("" without peer security)


@dataclass(frozen=True)
class Config:
    name: str = "default"
    data_dir: str = ""
    listen_client_urls: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:7379"])
    advertise_client_urls: list[str] = field(default_factory=list)
    listen_peer_urls: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:7380"])
    initial_advertise_peer_urls: list[str] = field(default_factory=list)
    listen_watch_urls: list[str] = field(default_factory=lambda: ["tcp://127.0.0.1:7381"])
    # /metrics, /health, /livez, /readyz over HTTP (etcd's flag); [] = off.
    listen_metrics_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:7382"])
    # etcd's gRPC API (issue 18, actors/grpcgw/): http:// or https://; [] = off. On by default
    # on loopback at etcd's own client port, so that etcdctl and etcd clients work against a
    # bare `qkv` as against a bare `etcd` (README "etcd's gRPC API").
    listen_grpc_urls: list[str] = field(default_factory=lambda: ["http://127.0.0.1:2379"])
    advertise_grpc_urls: list[str] = field(default_factory=list)  # what member_list shows as clientURLs to etcd clients
    cert_file: str = ""  # TLS certificate of the gRPC gateway's https:// URLs (etcd's --cert-file)
    key_file: str = ""  # its private key (etcd's --key-file)
    trusted_ca_file: str = ""  # CA that signs client certificates (etcd's --trusted-ca-file)
    initial_cluster: str = ""
    initial_cluster_state: str = "new"
    initial_cluster_token: str = "qkv-cluster"
    heartbeat_interval: int = 100  # ms
    election_timeout: int = 1000  # ms
    snapshot_count: int = 10_000
    max_request_bytes: int = 1_572_864
    max_txn_ops: int = 128
    # Hostile-load bounds (issue 12; README "Limits").
    max_txn_keys: int = 5_000  # keys one request's txn compares, ranges and deletes may examine
    max_client_queue_bytes: int = 4 * 1024**2  # replies held for one client connection
    max_client_requests: int = 64  # requests of one client connection in progress at once
    watch_subscriber_bytes: int = 8 * 1024**2  # messages queued for one watch subscriber
    max_watch_subscriptions: int = 1_000  # subscriptions of one watch connection
    quota_backend_bytes: int = 2 * 1024**3  # 0 = the default (2 GiB), as in etcd
    corrupt_check_time: float = 60.0  # s between the leader's hash comparisons; 0 = off
    auto_compaction_mode: str = "periodic"
    auto_compaction_retention: str = "0"  # 0 = off; see actors/storage/compactor.py
    # Revisions one slice of physical compaction removes at most (etcd's
    # --experimental-compaction-batch-limit); a slice also stops after ~5 ms.
    compaction_batch_limit: int = 1000
    log_level: str = "info"
    log_format: str = "json"
    force_new_cluster: bool = False  # restart as a one-member cluster keeping the data
    auto_promote_learners: bool = False  # the leader promotes learners once caught up
    # Security (actors/runtime/security.py, README "Security").
    peer_key_file: str = ""  # this member's secret cert: CURVE on the peer port
    initial_cluster_keys: str = ""  # name=Z85,... peer public keys of the initial members
    client_key_file: str = ""  # the server's secret cert for the client and watch ports
    client_cert_auth: bool = False  # a client key registered on a user authenticates as it
    auth_token_ttl: int = 300  # s, etcd's simple token TTL
    insecure_peer: bool = False  # allow non-loopback peer URLs without peer security
    insecure_client: bool = False  # allow non-loopback client/watch URLs without client security
    test_fault_injection: bool = False  # tests only: read faults.json and QKV_FAILPOINTS
    # Set by the supervisor, never by a flag: the identity of a member that joined an
    # existing cluster (`--initial-cluster-state existing`), learned from its peers and
    # kept in <data-dir>/member.json; 0 / [] = derived from the flags.
    assigned_member_id: int = 0
    assigned_cluster_id: int = 0
    initial_members: list = field(default_factory=list)  # [[id, name, peer_urls, is_learner], ...]

    # --- derived -----------------------------------------------------------------
    @property
    def members(self) -> list[Member]:
        """The initial cluster, parsed from `--initial-cluster` (name=url,name=url)."""
        by_name: dict[str, list[str]] = {}
        for item in self.initial_cluster.split(","):
            name, url = item.split("=", 1)
            by_name.setdefault(name.strip(), []).append(url.strip())
        keys = self.initial_keys
        return [Member(n, member_id(self.initial_cluster_token, n), urls, keys.get(n, ""))
                for n, urls in by_name.items()]

    @property
    def initial_keys(self) -> dict[str, str]:
        """`--initial-cluster-keys`: member name -> Z85 peer public key."""
        keys: dict[str, str] = {}
        for item in self.initial_cluster_keys.split(","):
            if "=" in item:
                name, key = item.split("=", 1)
                keys[name.strip()] = key.strip()
        return keys

    @property
    def peer_security(self) -> bool:
        return bool(self.peer_key_file)

    @property
    def client_security(self) -> bool:
        return bool(self.client_key_file)

    @property
    def member_id(self) -> int:
        return self.assigned_member_id or member_id(self.initial_cluster_token, self.name)

    @property
    def cluster_id(self) -> int:
        return self.assigned_cluster_id or cluster_id(self.initial_cluster_token, [m.id for m in self.members])

    @property
    def heartbeat_tick(self) -> int:
        return 1

    @property
    def election_tick(self) -> int:
        return max(2, round(self.election_timeout / self.heartbeat_interval))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls(**json.loads(text))


# flag name -> (validator, Config field). Order = the order of `qkv --help`.
_V = Callable[[str, Any], Any]
FLAGS: dict[str, _V] = {
    "name": _name,
    "data-dir": lambda f, v: str(v),
    "listen-client-urls": _url_list,
    "advertise-client-urls": _url_list,
    "listen-peer-urls": _url_list,
    "initial-advertise-peer-urls": _url_list,
    "listen-watch-urls": _url_list,
    "listen-metrics-urls": _http_url_list,
    "listen-grpc-urls": _grpc_url_list,
    "advertise-grpc-urls": _grpc_url_list,
    "cert-file": lambda f, v: str(v),
    "key-file": lambda f, v: str(v),
    "trusted-ca-file": lambda f, v: str(v),
    "initial-cluster": lambda f, v: str(v).strip(),
    "initial-cluster-state": lambda f, v: _choice(f, v, ("new", "existing")),
    "initial-cluster-token": lambda f, v: _name(f, v),
    "heartbeat-interval": lambda f, v: _positive_int(f, v, 1, 5000),
    "election-timeout": lambda f, v: _positive_int(f, v, 1, 50000),
    "snapshot-count": lambda f, v: _positive_int(f, v, 1),
    "max-request-bytes": lambda f, v: _positive_int(f, v, 1024, 64 * 1024 * 1024),
    "max-txn-ops": lambda f, v: _positive_int(f, v, 1, 100_000),
    "max-txn-keys": lambda f, v: _positive_int(f, v, 1, 10_000_000),
    "max-client-queue-bytes": lambda f, v: _positive_int(f, v, 64 * 1024, 1024**3),
    "max-client-requests": lambda f, v: _positive_int(f, v, 1, 100_000),
    "watch-subscriber-bytes": lambda f, v: _positive_int(f, v, 256 * 1024, 1024**3),
    "max-watch-subscriptions": lambda f, v: _positive_int(f, v, 1, 1_000_000),
    "quota-backend-bytes": lambda f, v: _positive_int(f, v, 0),
    "corrupt-check-time": lambda f, v: _duration(f, v),
    "auto-compaction-mode": lambda f, v: _choice(f, v, ("periodic", "revision")),
    "auto-compaction-retention": lambda f, v: str(v).strip(),
    "compaction-batch-limit": lambda f, v: _positive_int(f, v, 1, 1_000_000),
    "log-level": lambda f, v: _log_level(f, v),
    "log-format": lambda f, v: _choice(f, v, ("json", "console")),
    "force-new-cluster": _bool,
    "auto-promote-learners": _bool,
    "peer-key-file": lambda f, v: str(v),
    "initial-cluster-keys": lambda f, v: str(v).strip(),
    "client-key-file": lambda f, v: str(v),
    "client-cert-auth": _bool,
    "auth-token-ttl": lambda f, v: _positive_int(f, v, 1, 7 * 24 * 3600),
    "insecure-peer": _bool,
    "insecure-client": _bool,
    "test-fault-injection": _bool,
}


def env_name(flag: str) -> str:
    return "QKV_" + flag.upper().replace("-", "_")


def load_config(
    flags: dict[str, Any], env: Mapping[str, str] | None = None, config_file: str | None = None
) -> Config:
    """Merge flags > env > config file > defaults, validate, and derive the rest."""
    env = os.environ if env is None else env
    config_file = config_file or env.get("QKV_CONFIG_FILE")
    raw: dict[str, Any] = {}
    if config_file:
        try:
            with open(config_file, "rb") as f:
                from_file = tomllib.load(f)
        except OSError as exc:
            raise ConfigError(f"invalid --config-file {config_file!r}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"invalid --config-file {config_file!r}: {exc}") from None
        for key, value in from_file.items():
            flag = key.replace("_", "-")
            if flag not in FLAGS:
                raise ConfigError(f"invalid --config-file {config_file!r}: unknown setting {key!r}")
            raw[flag] = (f"--config-file {key}", value)
    for flag in FLAGS:
        if env.get(env_name(flag)) not in (None, ""):
            raw[flag] = (env_name(flag), env[env_name(flag)])
    for flag, value in flags.items():
        if value is not None:
            if flag not in FLAGS:
                raise ConfigError(f"unknown flag --{flag}")
            raw[flag] = (f"--{flag}", value)

    values: dict[str, Any] = {}
    for flag, (source, value) in raw.items():
        label = source if source.startswith("--config-file") or source.startswith("QKV_") else f"--{flag}"
        values[flag.replace("-", "_")] = FLAGS[flag](label if label.startswith("--") else f"--{flag} (from {label})", value)

    cfg = Config(**values)
    changes: dict[str, Any] = {}
    if not cfg.data_dir:
        changes["data_dir"] = f"{cfg.name}.qkv"
    if not cfg.advertise_client_urls:
        changes["advertise_client_urls"] = list(cfg.listen_client_urls)
    if not cfg.initial_advertise_peer_urls:
        changes["initial_advertise_peer_urls"] = list(cfg.listen_peer_urls)
    if not cfg.advertise_grpc_urls and cfg.listen_grpc_urls:
        changes["advertise_grpc_urls"] = list(cfg.listen_grpc_urls)
    if not cfg.initial_cluster:
        peers = changes.get("initial_advertise_peer_urls", cfg.initial_advertise_peer_urls)
        changes["initial_cluster"] = ",".join(f"{cfg.name}={u}" for u in peers)
    cfg = dataclasses.replace(cfg, **changes)
    _check(cfg)
    return cfg


def _check(cfg: Config) -> None:
    from actors.storage.compactor import parse_retention

    try:
        parse_retention(cfg.auto_compaction_mode, cfg.auto_compaction_retention)
    except ValueError:
        raise ConfigError(
            f"invalid --auto-compaction-retention {cfg.auto_compaction_retention!r}: must be hours or a "
            f"duration like 30m (periodic), or a number of revisions (revision)") from None
    if cfg.election_timeout < 5 * cfg.heartbeat_interval:
        raise ConfigError(
            f"invalid --election-timeout {cfg.election_timeout}: must be at least 5 x --heartbeat-interval "
            f"({cfg.heartbeat_interval})"
        )
    names: set[str] = set()
    for item in cfg.initial_cluster.split(","):
        if "=" not in item:
            raise ConfigError(f"invalid --initial-cluster {cfg.initial_cluster!r}: expected name=url,name=url")
        name, url = item.split("=", 1)
        _name("--initial-cluster", name)
        _zmq_url("--initial-cluster", url)
        names.add(name.strip())
    if cfg.name not in names:
        raise ConfigError(
            f"invalid --initial-cluster {cfg.initial_cluster!r}: it has no member named {cfg.name!r} (--name)"
        )
    ids = [m.id for m in cfg.members]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"invalid --initial-cluster {cfg.initial_cluster!r}: duplicate member")
    _check_exposure(cfg)
    _check_security(cfg, names)
    _check_grpc(cfg)


def _check_grpc(cfg: Config) -> None:
    """The gRPC gateway's TLS flags (etcd's), refused at start with the flag named rather
    than at the first client: files must exist and be PEM that TLS can load (the key
    unencrypted and matching the certificate); an https:// URL needs --cert-file and
    --key-file; the TLS flags need an https:// URL to apply to (etcd only warns and
    ignores them); --client-cert-auth with an https:// URL needs --trusted-ca-file, the
    CA client certificates are verified against (their CN is then the user, as in etcd;
    etcd would fall back to the system's CAs, which is never what is meant)."""
    for flag, path in (("--cert-file", cfg.cert_file), ("--key-file", cfg.key_file),
                       ("--trusted-ca-file", cfg.trusted_ca_file)):
        if path and not os.path.isfile(path):
            raise ConfigError(f"invalid {flag} {path!r}: no such file")
    tls = [u for u in cfg.listen_grpc_urls if u.startswith("https://")]
    if tls and not (cfg.cert_file and cfg.key_file):
        raise ConfigError(f"--listen-grpc-urls {tls[0]} needs --cert-file and --key-file")
    if bool(cfg.cert_file) != bool(cfg.key_file):
        given, missing = ("--cert-file", "--key-file") if cfg.cert_file else ("--key-file", "--cert-file")
        raise ConfigError(f"{given} needs {missing} (the certificate and its private key go together)")
    for flag, value in (("--cert-file", cfg.cert_file), ("--trusted-ca-file", cfg.trusted_ca_file)):
        if value and not tls:
            raise ConfigError(f"{flag} needs an https:// URL in --listen-grpc-urls (it secures only the gRPC "
                              f"gateway)")
    if tls and cfg.client_cert_auth and not cfg.trusted_ca_file:
        raise ConfigError(f"--client-cert-auth with --listen-grpc-urls {tls[0]} needs --trusted-ca-file (the CA "
                          f"that signs the client certificates)")
    if tls:
        _check_tls_files(cfg.cert_file, cfg.key_file, cfg.trusted_ca_file)


def _check_tls_files(cert_file: str, key_file: str, ca_file: str) -> None:
    """Load the files as the TLS server will (Python's ssl: OpenSSL, as grpcio's BoringSSL
    reads the same PEM), so a wrong file is a start-up error naming it."""
    import ssl

    def no_passphrase() -> bytes:
        raise ConfigError(f"invalid --key-file {key_file!r}: the private key is encrypted (give it without "
                          f"a passphrase, as etcd needs it)")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_cert_chain(cert_file, key_file, password=no_passphrase)
    except ConfigError:
        raise
    except ssl.SSLError as exc:
        raise ConfigError(f"invalid --cert-file {cert_file!r} / --key-file {key_file!r}: not a PEM certificate "
                          f"and its matching private key ({exc.reason or exc})") from None
    except OSError as exc:
        raise ConfigError(f"invalid --cert-file {cert_file!r} / --key-file {key_file!r}: {exc.strerror or exc}") \
            from None
    if ca_file:
        try:
            ctx.load_verify_locations(cafile=ca_file)
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
            raise ConfigError(f"invalid --trusted-ca-file {ca_file!r}: not a PEM CA certificate ({reason})") \
                from None


def _check_security(cfg: Config, names: set[str]) -> None:
    from actors.runtime import security

    for flag, path in (("--peer-key-file", cfg.peer_key_file), ("--client-key-file", cfg.client_key_file)):
        if path:
            try:
                security.load_keypair(path)
            except security.KeyFileError as exc:
                raise ConfigError(f"invalid {flag}: {exc}") from None
    keys = cfg.initial_keys
    for item in cfg.initial_cluster_keys.split(",") if cfg.initial_cluster_keys else []:
        name, _, key = item.partition("=")
        if name.strip() not in names or not security.valid_z85_key(key.strip()):
            raise ConfigError(f"invalid --initial-cluster-keys {item!r}: expected name=<40-character Z85 key> "
                              f"for a member of --initial-cluster")
    if cfg.peer_key_file:
        own = security.load_keypair(cfg.peer_key_file)[0].decode()
        if cfg.initial_cluster_state == "new":
            missing = sorted(names - set(keys))
            if missing:
                raise ConfigError(f"--peer-key-file needs --initial-cluster-keys with every member's peer key; "
                                  f"missing: {', '.join(missing)}")
        if cfg.name in keys and keys[cfg.name] != own:
            raise ConfigError(f"invalid --initial-cluster-keys: the key given for {cfg.name!r} is not the public "
                              f"key of --peer-key-file")


def is_loopback_url(url: str) -> bool:
    """True when a listen URL can only be reached from this host: ipc://, or a tcp:// host
    in 127.0.0.0/8, ::1 or `localhost`. Wildcards (`*`, 0.0.0.0, ::) and names other than
    localhost count as reachable from the network."""
    if url.startswith(("ipc://", "inproc://")):
        return True
    host = urlsplit(url).hostname or ""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # `*`, an interface or a host name: assume it is exposed


def _check_exposure(cfg: Config) -> None:
    """Refuse to listen beyond loopback without security, unless told it is wanted
    (etcd would serve plain text there; we require saying so)."""
    exposed_peer = [u for u in cfg.listen_peer_urls if not is_loopback_url(u)]
    if exposed_peer and not cfg.peer_key_file and not cfg.insecure_peer:
        raise ConfigError(
            f"refusing to listen on {exposed_peer[0]} (--listen-peer-urls) without peer security: "
            f"add --peer-key-file (or --insecure-peer to allow plain text peer traffic)")
    # --listen-metrics-urls is not checked: it serves no key, value or write (metrics and
    # health verdicts only, as etcd's does), and a Prometheus on another host must reach it.
    plain_grpc = [u for u in cfg.listen_grpc_urls if u.startswith("http://") and not is_loopback_url(u)]
    if plain_grpc and not cfg.insecure_client:  # CURVE keys do not secure gRPC: only https:// does
        raise ConfigError(
            f"refusing to listen on {plain_grpc[0]} (--listen-grpc-urls) in plain text: use an https:// URL "
            f"with --cert-file and --key-file (or --insecure-client to allow plain text clients)")
    for flag, urls in (("--listen-client-urls", cfg.listen_client_urls),
                       ("--listen-watch-urls", cfg.listen_watch_urls)):
        exposed = [u for u in urls if not is_loopback_url(u)]
        if exposed and not cfg.client_key_file and not cfg.insecure_client:
            raise ConfigError(
                f"refusing to listen on {exposed[0]} ({flag}) without client security: "
                f"add --client-key-file (or --insecure-client to allow plain text clients)")
