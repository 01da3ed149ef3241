"""`qkv`: run one quorumkv node in the foreground (etcd's flags, see `qkv --help`)."""
from __future__ import annotations

import sys
from typing import Any, Optional

import typer

from nodes.config import VERSION, ConfigError, load_config

# rich_markup_mode=None: plain click help (rich markup would eat "[default: ...]").
app = typer.Typer(add_completion=False, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})

_ENV = "Also settable as QKV_{} or in the --config-file."


# Any, as typer.Option itself is typed: the default of a parameter is an OptionInfo that
# typer replaces with the parameter's value (str | None here) before run() sees it.
def _opt(help_text: str) -> Any:
    return typer.Option(None, help=help_text, show_default=False)


@app.command()
def run(
    name: Optional[str] = _opt("Human-readable name for this member. [default: default]"),
    data_dir: Optional[str] = _opt("Path to the data directory. [default: <name>.qkv]"),
    listen_client_urls: Optional[str] = _opt("URLs to serve clients on. [default: tcp://127.0.0.1:7379]"),
    advertise_client_urls: Optional[str] = _opt("Client URLs to advertise to the cluster. [default: the listen URLs]"),
    listen_peer_urls: Optional[str] = _opt("URLs to talk to peers on. [default: tcp://127.0.0.1:7380]"),
    initial_advertise_peer_urls: Optional[str] = _opt("Peer URLs to advertise. [default: the listen peer URLs]"),
    listen_watch_urls: Optional[str] = _opt("URLs to publish watch events on. [default: tcp://127.0.0.1:7381]"),
    listen_metrics_urls: Optional[str] = _opt(
        "HTTP URLs to serve /metrics, /health, /livez and /readyz on; empty = off. [default: http://127.0.0.1:7382]"),
    listen_grpc_urls: Optional[str] = _opt(
        "URLs to serve etcd's gRPC API on (etcdctl, etcd client libraries): http:// or https:// "
        "(with --cert-file/--key-file); empty = off. [default: http://127.0.0.1:2379]"),
    advertise_grpc_urls: Optional[str] = _opt("gRPC URLs etcd clients are told of. [default: the listen gRPC URLs]"),
    cert_file: Optional[str] = _opt("TLS certificate of the https:// gRPC URLs (etcd's --cert-file)."),
    key_file: Optional[str] = _opt("TLS private key of the https:// gRPC URLs (etcd's --key-file)."),
    trusted_ca_file: Optional[str] = _opt(
        "CA of gRPC client certificates; with --client-cert-auth the certificate's CN is the user."),
    initial_cluster: Optional[str] = _opt("Initial cluster: name=peer-url,... [default: <name>=<peer url>]"),
    initial_cluster_state: Optional[str] = _opt("new or existing. [default: new]"),
    initial_cluster_token: Optional[str] = _opt("Initial cluster token. [default: qkv-cluster]"),
    heartbeat_interval: Optional[str] = _opt("Time of a heartbeat interval, in ms. [default: 100]"),
    election_timeout: Optional[str] = _opt("Time of an election timeout, in ms. [default: 1000]"),
    snapshot_count: Optional[str] = _opt("Applied entries between log compactions. [default: 10000]"),
    max_request_bytes: Optional[str] = _opt("Largest client request, in bytes. [default: 1572864]"),
    max_txn_ops: Optional[str] = _opt("Most operations in one txn. [default: 128]"),
    max_txn_keys: Optional[str] = _opt(
        "Most keys one txn's compares, ranges and deletes may examine. [default: 5000]"),
    max_client_queue_bytes: Optional[str] = _opt(
        "Reply bytes held for one client connection; past it the connection waits. [default: 4194304]"),
    max_client_requests: Optional[str] = _opt(
        "Requests of one client connection in progress at once; more wait. [default: 64]"),
    watch_subscriber_bytes: Optional[str] = _opt(
        "Bytes queued for one watch subscriber; past it live messages are dropped. [default: 8388608]"),
    max_watch_subscriptions: Optional[str] = _opt("Subscriptions of one watch connection. [default: 1000]"),
    quota_backend_bytes: Optional[str] = _opt("Backend size quota, in bytes; 0 = the default. [default: 2147483648]"),
    corrupt_check_time: Optional[str] = _opt("How often the leader compares members' hashes (0 = never). [default: 60s]"),
    auto_compaction_mode: Optional[str] = _opt("periodic or revision. [default: periodic]"),
    auto_compaction_retention: Optional[str] = _opt(
        "Auto-compaction retention: hours or a duration (periodic), revisions (revision); 0 = off. [default: 0]"),
    compaction_batch_limit: Optional[str] = _opt(
        "Most revisions one slice of background compaction removes (a slice also stops after ~5 ms). "
        "[default: 1000]"),
    log_level: Optional[str] = _opt("debug, info, warn, error, panic or fatal (as etcd). [default: info]"),
    log_format: Optional[str] = _opt("json or console. [default: json]"),
    force_new_cluster: bool = typer.Option(
        False, "--force-new-cluster", show_default=False,
        help="Restart this member as a one-member cluster with its data (disaster recovery)."),
    auto_promote_learners: bool = typer.Option(
        False, "--auto-promote-learners", show_default=False,
        help="The leader promotes a learner to voter as soon as it has caught up."),
    peer_key_file: Optional[str] = _opt("This member's secret key file (qkv keygen): CURVE on the peer port."),
    initial_cluster_keys: Optional[str] = _opt("Peer public keys of the initial members: name=<Z85 key>,..."),
    client_key_file: Optional[str] = _opt("The server's secret key file for the client and watch ports (CURVE)."),
    client_cert_auth: bool = typer.Option(
        False, "--client-cert-auth", show_default=False,
        help="A client key registered on a user (user add --public-key) authenticates as that user."),
    auth_token_ttl: Optional[str] = _opt("Lifetime of an auth token, in seconds. [default: 300]"),
    insecure_peer: bool = typer.Option(
        False, "--insecure-peer", show_default=False,
        help="Allow non-loopback peer URLs without --peer-key-file (plaintext, unauthenticated peers)."),
    insecure_client: bool = typer.Option(
        False, "--insecure-client", show_default=False,
        help="Allow non-loopback client/watch URLs without --client-key-file (plaintext)."),
    test_fault_injection: bool = typer.Option(
        False, "--test-fault-injection", show_default=False, hidden=True,
        help="Tests only: obey the fault file and QKV_FAILPOINTS."),
    config_file: Optional[str] = _opt("A TOML file with any of these settings (flag names as keys)."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    """Run a quorumkv node. Every flag can also be given as QKV_<FLAG> in the environment
    (e.g. QKV_DATA_DIR) or in the TOML --config-file; flags win over the environment,
    which wins over the file."""
    if version:
        typer.echo(f"qkv version {VERSION}")
        raise typer.Exit(0)
    flags = {k.replace("_", "-"): v for k, v in locals().items() if k not in ("config_file", "version")}
    for flag in ("force-new-cluster", "auto-promote-learners", "client-cert-auth", "insecure-peer", "insecure-client",
                 "test-fault-injection"):
        flags[flag] = True if flags[flag] else None  # unset: the environment or file decides
    try:
        cfg = load_config(flags, config_file=config_file)
    except ConfigError as exc:
        typer.echo(f"qkv: {exc}", err=True)
        raise typer.Exit(2)

    from nodes.supervisor import StartupError, Supervisor

    supervisor = Supervisor(cfg)
    try:
        supervisor.prepare()
    except StartupError as exc:
        typer.echo(f"qkv: {exc}", err=True)
        raise typer.Exit(exc.exit_code)
    raise typer.Exit(supervisor.run())


keygen_app = typer.Typer(add_completion=False, rich_markup_mode=None, context_settings={"help_option_names": ["-h", "--help"]})


@keygen_app.command()
def keygen(
    name: str = typer.Option(..., "--name", help="Base name of the files: NAME.key and NAME.key_secret."),
    directory: str = typer.Option(".", "--dir", help="Where to write them (created 0700 if missing)."),
) -> None:
    """Generate a CURVE key pair: NAME.key (public, give it to the cluster) and
    NAME.key_secret (secret, mode 0600, --peer-key-file / --client-key-file)."""
    from actors.runtime import security

    try:
        public_path, secret_path = security.generate(directory, name)
    except (security.KeyFileError, OSError) as exc:
        typer.echo(f"qkv keygen: {exc}", err=True)
        raise typer.Exit(1)
    typer.echo(f"public key: {security.load_public(public_path).decode()}")
    typer.echo(f"wrote {public_path} and {secret_path} (0600)")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "keygen":
        keygen_app(args=sys.argv[2:], prog_name="qkv keygen")
        return
    app(prog_name="qkv")


if __name__ == "__main__":
    main()
