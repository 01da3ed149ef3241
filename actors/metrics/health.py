"""The health verdicts of `/health`, `/livez` and `/readyz`, and their HTTP answers, as etcd
gives them (server/etcdserver/api/etcdhttp/health.go of etcd 3.5/3.6; etcd 3.4.23's /health
is the same but for the `reason` field and `?serializable`, see below).

Pure: no I/O, no clock. The metrics actor (actors/metrics/probe.py) observes the node (its
consensus and storage actors) into an `Observation`; the functions here decide.

/health (etcd's `NewHealthHandler` + `checkAlarms`, `checkLeader`, `checkAPI`):
- GET only: any other method gets 405 `Method Not Allowed` (Allow: GET);
- an alarm of the cluster not named by `?exclude=` (repeatable: `?exclude=NOSPACE`) makes it
  false with the reason `ALARM NOSPACE` / `ALARM CORRUPT` / `ALARM UNKNOWN`; no alarm is
  excluded by default (checked against etcd 3.4.23: a NOSPACE alarm gives 503 until
  `?exclude=NOSPACE`);
- then no leader (unless `?serializable=true`, exactly "true"): `RAFT NO LEADER`;
- then a read: linearizable by default (a read index from consensus, then storage applied
  that far), local with `?serializable=true` (storage answers); its failure gives
  `RANGE ERROR:<the error>`;
- the answer: 200 and `{"health":"true","reason":""}` (no newline), or 503 and the JSON with
  a newline (Go's http.Error), `text/plain; charset=utf-8` either way, as Go sniffs and
  writes them.
  etcd 3.4.23 (/usr/bin/etcd here) answers `{"health":"true"}`: 3.4 keeps the reason out of
  the JSON (`json:"-"`) and ignores `?serializable`. The issue asks for the reason (3.5's
  answer), so that is what we give; a client that reads `health` works with both.

/livez and /readyz (etcd's `CheckRegistry`): a list of named checks; GET only (405 like
/health); `?exclude=name` (repeatable; unknown names ignored) leaves checks out;
`/readyz/<name>` runs one; success is 200 `ok\\n` (with `?verbose` the `[+]name ok` lines
before it); a failure is 503 with every check's line (`[-]name failed: <error>`) and an
empty line. Go runs the checks in map order (random); we run them in registration order.
- livez: serializable_read;
- readyz: data_corruption (a CORRUPT alarm: `alarm activated: CORRUPT`), serializable_read,
  linearizable_read, non_learner (`not supported for learner`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs

# The error etcd gives for a request that ran out of time (protocol/errors.py Timeout).
TIMED_OUT = "etcdserver: request timed out"
JSON_TYPE = "text/plain; charset=utf-8"  # what Go's content sniffing calls {"health":...}
TEXT_TYPE = "text/plain; charset=utf-8"
NOSNIFF = ("X-Content-Type-Options", "nosniff")
MAX_FIELDS = 64  # query fields read; the rest are ignored (a query is attacker input)

LIVEZ_CHECKS = ("serializable_read",)
READYZ_CHECKS = ("data_corruption", "serializable_read", "linearizable_read", "non_learner")
CHECKS = {"livez": LIVEZ_CHECKS, "readyz": READYZ_CHECKS}


@dataclass(frozen=True)
class Observation:
    """What the probe saw of this member. `None` fields: that actor did not answer in time."""
    alarms: tuple[str, ...] | None  # the cluster's alarm types, in storage's order
    leader: int | None  # consensus's leader id; 0 = none known
    is_learner: bool | None
    serializable_error: str | None  # a local read failed: why (None: it worked)
    linearizable_error: str | None  # a linearizable read failed: why (None: it worked, or not asked)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Query:
    exclude: frozenset[str]
    serializable: bool
    verbose: bool


def parse_query(query: str) -> Query:
    """The parts of a query string the health endpoints read (Go's URL.Query semantics:
    `exclude` repeatable, empty values skipped; `serializable` exactly "true"; `verbose`
    present with any value)."""
    # At most MAX_FIELDS fields are read (parse_qs would raise past its own limit).
    fields = parse_qs("&".join(query.split("&", MAX_FIELDS)[:MAX_FIELDS]), keep_blank_values=True)
    exclude = frozenset(v for v in fields.get("exclude", []) if v)
    serializable = fields.get("serializable", [""])[0] == "true"
    return Query(exclude, serializable, "verbose" in fields)


def _alarm_reason(alarm: str) -> str:
    return {"NOSPACE": "ALARM NOSPACE", "CORRUPT": "ALARM CORRUPT"}.get(alarm, "ALARM UNKNOWN")


def health_verdict(obs: Observation, exclude: frozenset[str], serializable: bool) -> tuple[bool, str]:
    """(healthy, reason) as etcd's /health decides: alarms, then the leader, then a read."""
    for alarm in obs.alarms or ():
        if alarm not in exclude:
            return False, _alarm_reason(alarm)
    if not serializable and obs.leader == 0:
        return False, "RAFT NO LEADER"
    error = obs.serializable_error if serializable else obs.linearizable_error
    if error is not None:
        return False, f"RANGE ERROR:{error}"
    return True, ""


def check_results(obs: Observation, names: tuple[str, ...]) -> list[tuple[str, str | None]]:
    """Each named check's error (None: ok), in the order given."""
    results: list[tuple[str, str | None]] = []
    for name in names:
        error: str | None
        if name == "data_corruption":
            error = "alarm activated: CORRUPT" if "CORRUPT" in (obs.alarms or ()) else None
        elif name == "serializable_read":
            error = obs.serializable_error
        elif name == "linearizable_read":
            error = obs.linearizable_error
        elif name == "non_learner":
            error = "not supported for learner" if obs.is_learner else None
        else:
            raise ValueError(f"unknown check {name!r}")
        results.append((name, error))
    return results


def select_checks(kind: str, exclude: frozenset[str]) -> tuple[str, ...]:
    """The checks of /livez or /readyz a root request runs (unknown exclusions are ignored, as
    etcd does "for version compatibility")."""
    return tuple(name for name in CHECKS[kind] if name not in exclude)


def needs(names: tuple[str, ...]) -> tuple[bool, bool]:
    """(storage, linearizable read): what the probe must ask to run these checks."""
    return bool(names), "linearizable_read" in names


def _go_json(value: dict[str, str]) -> bytes:
    """encoding/json's output: no spaces, <, > and & escaped, UTF-8 otherwise."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026").encode()


def method_not_allowed() -> Answer:
    return Answer(405, (("Allow", "GET"), ("Content-Type", TEXT_TYPE), NOSNIFF), b"Method Not Allowed\n")


def not_found() -> Answer:
    return Answer(404, (("Content-Type", TEXT_TYPE), NOSNIFF), b"404 page not found\n")


def health_answer(healthy: bool, reason: str) -> Answer:
    body = _go_json({"health": "true" if healthy else "false", "reason": reason})
    if healthy:
        return Answer(200, (("Content-Type", JSON_TYPE),), body)
    return Answer(503, (("Content-Type", TEXT_TYPE), NOSNIFF), body + b"\n")


def checks_answer(results: list[tuple[str, str | None]], verbose: bool) -> Answer:
    lines = "".join(f"[+]{name} ok\n" if error is None else f"[-]{name} failed: {error}\n"
                    for name, error in results)
    if any(error is not None for _, error in results):
        return Answer(503, (("Content-Type", TEXT_TYPE), NOSNIFF), (lines + "\n").encode())
    return Answer(200, (("Content-Type", TEXT_TYPE), NOSNIFF), ((lines if verbose else "") + "ok\n").encode())
