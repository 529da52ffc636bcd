"""The server's Prometheus metrics (``GET /metrics``, served by :mod:`hutch.server._observe`).

Each application has a registry of its own (:class:`Metrics`), so several servers in one
process (tests) never share or collide on a series.

Labels are bounded: a status, a workspace name (workspaces are made by an admin), a route
*template*, an error type, a transport or a direction; never a sandbox id, a name or a path.

What exists now (sandboxes by status and workspace, the command output held in memory) is read
when scraped, not counted up and down, so it cannot drift from the truth; what happened
(creates, deletes, commands, bytes, pulls, the reaper's actions, errors) is counted.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hutch.domain import SandboxStatus
from hutch.server import _logs
from hutch.server._lifetimes import Action, Deadline
from hutch.store import Sandbox

#: The statuses a sandbox's record can have (each is reported, 0 included, per workspace).
STATUSES = tuple(status.value for status in SandboxStatus)

#: Seconds: sandbox creates (image pulls included) and deletes.
LIFECYCLE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
#: Seconds: a command from its request to its exit delivered.
EXEC_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800)

#: What the reaper did, by the deadline's action and the setting behind it.
_REAPER_ACTIONS = {
    (Action.STOP, "idle_ttl_seconds"): "idle_stop",
    (Action.DELETE, "idle_ttl_seconds"): "idle_delete",
    (Action.DELETE, "ttl_seconds"): "ttl_delete",
    (Action.DELETE, "delete_after_stop_seconds"): "delete_after_stop",
}


class _Current(Collector):
    """Gauges of the present, set from a fresh reading right before each scrape is rendered."""

    def __init__(self) -> None:
        self.sandboxes: Mapping[tuple[str, str], int] = {}
        self.workspaces: Iterable[str] = ()
        self.log_bytes = 0
        self.log_budget: int | None = None

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "hutch_sandboxes",
            "Sandboxes of this server now, by status and workspace",
            labels=["status", "workspace"],
        )
        for workspace in sorted(set(self.workspaces) | {w for _, w in self.sandboxes}):
            for status in STATUSES:
                family.add_metric([status, workspace], self.sandboxes.get((status, workspace), 0))
        yield family
        yield GaugeMetricFamily(
            "hutch_session_log_bytes",
            "Bytes of command output held in memory for command sessions",
            value=self.log_bytes,
        )
        if self.log_budget is not None:
            yield GaugeMetricFamily(
                "hutch_session_log_budget_bytes",
                "Most bytes of command output held in memory before finished sessions are "
                "forgotten (--session-log-budget)",
                value=self.log_budget,
            )


class Metrics:
    """One application's metrics, and the events that change them (each also logged where it
    is a lifecycle transition)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self._current = _Current()
        reg.register(self._current)
        self.creates = Counter(
            "hutch_sandbox_creates",
            "Sandbox creates finished, by outcome (ready, failed, deleted while provisioning)",
            ["outcome"],
            registry=reg,
        )
        self.create_seconds = Histogram(
            "hutch_sandbox_create_duration_seconds",
            "Seconds from a create to the sandbox ready (or failed), image pull included",
            ["outcome"],
            buckets=LIFECYCLE_BUCKETS,
            registry=reg,
        )
        self.deletes = Counter(
            "hutch_sandbox_deletes", "Sandbox deletes, by outcome", ["outcome"], registry=reg
        )
        self.delete_seconds = Histogram(
            "hutch_sandbox_delete_duration_seconds",
            "Seconds a sandbox delete took",
            ["outcome"],
            buckets=LIFECYCLE_BUCKETS,
            registry=reg,
        )
        self.exec_seconds = Histogram(
            "hutch_exec_duration_seconds",
            "Seconds from a command request (or a reattach) to its exit delivered, by transport "
            "(blocking /execute, ws, sse)",
            ["transport"],
            buckets=EXEC_BUCKETS,
            registry=reg,
        )
        self.output_bytes = Counter(
            "hutch_exec_output_bytes",
            "Bytes of command output sent to clients, by transport and stream",
            ["transport", "stream"],
            registry=reg,
        )
        self.tunnel_bytes = Counter(
            "hutch_tunnel_bytes",
            "Bytes of tunnel WebSocket messages (yamux frames), by direction "
            "(in: from clients, out: to clients)",
            ["direction"],
            registry=reg,
        )
        self.image_pulls = Counter(
            "hutch_image_pulls",
            "Image pulls from registries, by outcome",
            ["outcome"],
            registry=reg,
        )
        self.reaper_actions = Counter(
            "hutch_reaper_actions",
            "What the reaper did to sandboxes past a deadline "
            "(idle_stop, idle_delete, ttl_delete, delete_after_stop)",
            ["action"],
            registry=reg,
        )
        self.http_requests = Counter(
            "hutch_http_requests",
            "HTTP requests and WebSocket upgrades answered, by method, route template and status",
            ["method", "route", "status"],
            registry=reg,
        )
        self.http_seconds = Histogram(
            "hutch_http_request_duration_seconds",
            "Seconds from a request to the end of its response body (WebSockets: to the close)",
            ["method", "route"],
            registry=reg,
        )
        self.http_errors = Counter(
            "hutch_http_errors",
            "Error answers, by error type (detail.error of the envelope) and status",
            ["error", "status"],
            registry=reg,
        )

    def render(
        self,
        sandboxes: Mapping[tuple[str, str], int],
        workspaces: Iterable[str],
        log_bytes: int,
        log_budget: int | None,
    ) -> bytes:
        """The text exposition, with the present as just read (no await in between, so two
        scrapes at once cannot mix their readings)."""
        current = self._current
        current.sandboxes, current.workspaces = sandboxes, workspaces
        current.log_bytes, current.log_budget = log_bytes, log_budget
        return generate_latest(self.registry)

    # -- lifecycle events (called by the manager) --------------------------------------------

    def provisioning(self, row: Sandbox) -> None:
        _logs.transition(row.id, row.workspace_id, None, "provisioning", "create requested")

    def provisioned(
        self, row: Sandbox, status: str | None, message: str | None, seconds: float
    ) -> None:
        """Provisioning ended: ``status`` ready or failed, None when a delete cancelled it
        (whose own transition is logged by the delete)."""
        outcome = status or "deleted"
        self.creates.labels(outcome).inc()
        self.create_seconds.labels(outcome).observe(seconds)
        if status is not None:
            _logs.transition(
                row.id, row.workspace_id, "provisioning", status, message or "provisioned", seconds
            )

    def changed(self, row: Sandbox, new: str, reason: str, seconds: float | None = None) -> None:
        _logs.transition(row.id, row.workspace_id, row.status, new, reason, seconds)

    def deleted(self, row: Sandbox | None, ok: bool, seconds: float) -> None:
        outcome = "ok" if ok else "error"
        self.deletes.labels(outcome).inc()
        self.delete_seconds.labels(outcome).observe(seconds)
        if row is not None:
            _logs.transition(
                row.id,
                row.workspace_id,
                row.status,
                "deleted" if ok else "deleting",
                "delete requested" if ok else "delete failed; it is retried",
                seconds,
            )

    @contextmanager
    def reaping(self, deadline: Deadline) -> Iterator[None]:
        """The reaper acts on ``deadline``: what changes inside is logged with its reason, and
        counted once it is done (see :meth:`reaped`)."""
        with _logs.because(deadline.reason):
            yield

    def reaped(self, deadline: Deadline) -> None:
        """The reaper stopped or deleted a sandbox for ``deadline`` (not counted: a sandbox that
        a user deleted or stopped first)."""
        action = _REAPER_ACTIONS.get((deadline.action, deadline.reason), str(deadline.action))
        self.reaper_actions.labels(action).inc()

    # -- the data plane ------------------------------------------------------------------------

    def output(self, transport: str, stream: str, size: int) -> None:
        """``size`` bytes of a command's ``stream`` were sent to a client over ``transport``."""
        self.output_bytes.labels(transport, stream).inc(size)

    def exec_done(self, transport: str, seconds: float) -> None:
        """A command's exit reached its client ``seconds`` after the request."""
        self.exec_seconds.labels(transport).observe(seconds)

    def tunnel(self, direction: str, size: int) -> None:
        self.tunnel_bytes.labels(direction).inc(size)

    def image_pull(self, ok: bool) -> None:
        self.image_pulls.labels("ok" if ok else "error").inc()
