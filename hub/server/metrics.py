"""Prometheus metrics of one hub (a registry per hub, so several can run in one test process)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.connections = Gauge("intelhub_connections", "Authenticated node sessions", ["nation"], registry=r)
        self.accepted = Counter("intelhub_packets_accepted", "Packets accepted (new or idempotent retries)", registry=r)
        self.rejected = Counter("intelhub_packets_rejected", "Packets rejected, by reason code", ["reason"], registry=r)
        self.delivered = Counter("intelhub_deliveries", "Packets sent to subscriptions (incl. redeliveries)", registry=r)
        self.redelivered = Counter("intelhub_redeliveries", "Packets resent after the ack timeout", registry=r)
        self.acked = Counter("intelhub_acks", "Acknowledgements received", registry=r)
        self.queue_depth = Gauge("intelhub_queue_depth", "Unacknowledged deliveries in flight", ["nation", "sub"], registry=r)
        self.delivery_lag = Histogram("intelhub_delivery_lag_seconds",
                                      "Acceptance to acknowledgement, in whole seconds as acceptance times are "
                                      "(the oldest packet of each batch of acks)",
                                      buckets=(0, 1, 2, 5, 10, 30, 60, 300, 600, 3600, 86400), registry=r)
        self.accept_latency = Histogram("intelhub_accept_latency_seconds", "Receipt of a packet to ACCEPTED",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_latency = Histogram("intelhub_commit_seconds", "Duration of one group commit",
                                        buckets=_LATENCY_BUCKETS, registry=r)
        self.commit_batch = Histogram("intelhub_commit_batch_size", "Operations per group commit",
                                      buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=r)
        self.log_size = Gauge("intelhub_log_size", "Leaves in the transparency log", registry=r)
        self.auth_failures = Counter("intelhub_auth_failures", "Failed session authentications", registry=r)
        r.register(ThreadCPU())

    def on_commit(self, seconds: float, batch: int) -> None:
        # Called from the writer thread; prometheus_client metrics are thread-safe.
        self.commit_latency.observe(seconds)
        self.commit_batch.observe(batch)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ThreadCPU(Collector):
    """``intelhub_thread_cpu_seconds_total{thread, tid}``: the CPU time of each thread of the
    process, by name. The hub's work is split over named threads (MainThread: the event loop;
    hub-verify_N: signature checks; hub-sqlite-writer: group commits; hub-log-sign: checkpoints),
    so this says which part is saturated: a verify thread near one core asks for more
    ``verify_threads``, a writer near one core for a faster disk. Every thread of the process,
    so several hubs in one process (tests) share the figures."""

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("intelhub_thread_cpu_seconds", "CPU time of each thread of the hub's process",
                                     labels=["thread", "tid"])
        for t in threading.enumerate():
            # From /proc (Linux; elsewhere no samples), not time.pthread_getcpuclockid: that is
            # undefined behaviour for a thread that ends between enumerate() and the call.
            seconds = _thread_cpu_seconds(t.native_id) if t.native_id is not None else None
            if seconds is not None:
                family.add_metric([t.name, str(t.native_id)], seconds)
        yield family


_TICKS: Final = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _thread_cpu_seconds(tid: int) -> float | None:
    try:
        with open(f"/proc/self/task/{tid}/stat", "rb") as f:
            stat = f.read()
    except OSError:  # not Linux, or the thread ended meanwhile
        return None
    fields = stat.rsplit(b")", 1)[1].split()  # after the name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime + stime (proc(5) fields 14 and 15)
