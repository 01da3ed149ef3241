"""`process_*` for the whole node: etcd is one process and exports prometheus' standard
process metrics for it; a quorumkv node is the supervisor and its actors, so its
`process_resident_memory_bytes`, `process_cpu_seconds_total`, `process_open_fds` and
`process_virtual_memory_bytes` are the sums over them (`process_start_time_seconds` and
`process_max_fds` are the supervisor's). Each process is read by prometheus_client's own
ProcessCollector; this only finds the pids and adds up. The CPU of an actor that died
leaves the sum with it (a counter reset to Prometheus' `rate()`).
"""
from __future__ import annotations

import functools
import os
from typing import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

_SUMMED = frozenset(("process_virtual_memory_bytes", "process_resident_memory_bytes", "process_cpu_seconds",
                     "process_open_fds"))
_SUPERVISOR_ONLY = frozenset(("process_start_time_seconds", "process_max_fds"))
MAX_PROCESSES = 64  # a node has six; more children than this are not read


def node_pids(supervisor_pid: int, proc: str = "/proc") -> list[int]:
    """The supervisor and its children (Linux's /proc/PID/task/PID/children)."""
    pids = [supervisor_pid]
    try:
        with open(os.path.join(proc, str(supervisor_pid), "task", str(supervisor_pid), "children")) as f:
            pids += [int(p) for p in f.read().split()[:MAX_PROCESSES]]
    except (OSError, ValueError):
        pids.append(os.getpid())  # no children file: this actor at least
    return pids


class NodeProcessCollector(Collector):
    def __init__(self, supervisor_pid: int, proc: str = "/proc") -> None:
        self.supervisor_pid = supervisor_pid
        self.proc = proc

    def collect(self) -> Iterable[Metric]:
        values: dict[str, float] = {}
        kinds: dict[str, tuple[str, str]] = {}
        for pid in node_pids(self.supervisor_pid, self.proc):
            reader = ProcessCollector(pid=functools.partial(int, pid), proc=self.proc, registry=None)
            for family in reader.collect():
                if family.name in _SUMMED or (family.name in _SUPERVISOR_ONLY and pid == self.supervisor_pid):
                    values[family.name] = values.get(family.name, 0.0) + sum(s.value for s in family.samples)
                    kinds[family.name] = (family.type, family.documentation)
        for name, value in values.items():
            kind, doc = kinds[name]
            doc += " (the node's supervisor)" if name in _SUPERVISOR_ONLY else " (every process of the node, summed)"
            if kind == "counter":
                yield CounterMetricFamily(name, doc, value=value)
            else:
                yield GaugeMetricFamily(name, doc, value=value)
