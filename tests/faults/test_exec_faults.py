"""Streaming exec through a TCP proxy that cuts the connection (issue 3's fault test).

The sync SDK talks to a real server only through :class:`FaultProxy`: control plane and data
plane alike (a sandbox's ``dataplane_url`` is built from the request's base URL, so it points
at the proxy too; checked). A command in a busybox sandbox prints a large, varied output with
multi-byte UTF-8 while the proxy cuts every connection at random byte counts, by TCP reset or
plain close; the handle resumes from its byte offsets each time. The stdout it reassembles must
hash (sha256) exactly like the command's output: nothing lost, nothing twice.

The output is generated in the sandbox, deterministically, by ``awk`` (line numbers, runs of
``é✓日🎉`` and ASCII of varying length); its sha256 and size come from ``sha256sum`` and ``wc``
in the sandbox. The file is generated once and each run ``cat`` s it (awk alone makes ~18 MB/s
here, slower than the stream); a few runs stream the generator itself.

The SDK's reconnect backoff (0.5 s doubling, spec §4.7) goes through the client's ``_sleep``
seam, here shortened 50× so that a run with eight cuts does not sleep for four seconds; the
backoff path itself still runs.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import pytest

from hutch import Sandbox, SandboxClient, SandboxConnectionError
from tests.conftest import TIME_SCALE, Server
from tests.faults._proxy import Action, Connection, Direction, FaultProxy, Rule

pytestmark = pytest.mark.root

TEMPLATE = "faults-bb"
#: Lines of generator output: 860 000 lines are 58 082 181 bytes (≥ 50 MB).
LINES_FULL = 860_000
#: 100 runs at the full size: ~1 s a run, ~105 s in all, on a 2-CPU machine.
RUNS = 100
RUNS_LIVE = 3
CUTS = (3, 8)
#: Cut points count the proxy's server → client bytes: frames compressed by permessage-deflate,
#: about a tenth of the output here. No cut closer to the start than this (the ``started``
#: message must get through: a command that never started is reported, not resumed), and cuts
#: at least this far apart (each chunk received resets the SDK's count of consecutive losses).
MIN_GAP = 256 * 1024
SEED = 20240603
BACKOFF_SPEEDUP = 50.0


def generator(lines: int) -> str:
    """A shell command printing ``lines`` varied lines with multi-byte UTF-8, deterministically."""
    return (
        f'awk -v n={lines} \'BEGIN {{ s = "é✓日🎉"; for (i = 0; i < n; i++) {{ '
        'printf "%d:", i; k = i % 7; '
        'for (j = 0; j <= k; j++) printf "%s%c", s, 97 + (i + j) % 26; '
        'printf " %s\\n", (i % 3 ? "ascii tail" : "") } }\''
    )


@dataclass(frozen=True)
class Expected:
    path: str
    size: int
    sha256: str


def fast_sleep(seconds: float) -> None:
    time.sleep(seconds / BACKOFF_SPEEDUP)


@pytest.fixture(scope="module")
def proxy(server: Server) -> Iterator[FaultProxy]:
    port = urlsplit(server.url).port
    assert port is not None
    with FaultProxy(port) as p:
        yield p


@pytest.fixture(scope="module")
def proxied(server: Server, proxy: FaultProxy) -> Iterator[SandboxClient]:
    """A sync client whose every request goes through the proxy."""
    with SandboxClient(
        api_endpoint=f"http://127.0.0.1:{proxy.port}/v2/sandboxes",
        api_key=server.key,
        _sleep=fast_sleep,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def fault_sandbox(
    client: SandboxClient, proxied: SandboxClient, proxy: FaultProxy
) -> Iterator[Sandbox]:
    """One busybox sandbox for every run, reached through the proxy."""
    client.create_template(TEMPLATE, "local/busybox", cpu="1", memory="512Mi")
    direct = client.create_sandbox(TEMPLATE, wait_for_ready=True)
    try:
        sb = proxied.get_sandbox(direct.name)
        # The data plane goes through the proxy too, not straight to the server.
        assert sb.dataplane_url is not None
        assert sb.dataplane_url.startswith(f"http://127.0.0.1:{proxy.port}/dp/"), sb.dataplane_url
        yield sb
    finally:
        client.delete_sandbox(direct.name)
        client.delete_template(TEMPLATE)


@pytest.fixture(scope="module")
def expected_full(client: SandboxClient, fault_sandbox: Sandbox) -> Expected:
    """The generator's output in a file in the sandbox, and its size and sha256 from there."""
    path = "/tmp/faults-full.txt"
    sb = client.get_sandbox(fault_sandbox.name)  # directly: setup is not under test
    out = sb.run(
        f"{generator(LINES_FULL)} > {path} && wc -c < {path} && sha256sum {path}", timeout=0
    )
    assert out.exit_code == 0, out.stderr
    size, digest = out.stdout.split()[:2]
    assert int(size) >= 50_000_000
    return Expected(path, int(size), digest)


def marks_for(rng: random.Random, wire_bytes: int) -> list[tuple[int, bool]]:
    """3 to 8 cut points over the first 90 % of a clean run's wire bytes, each a reset or a
    plain close, at least MIN_GAP apart."""
    count = rng.randint(*CUTS)
    span = int(wire_bytes * 0.9) - MIN_GAP * (count + 1)
    assert span > 0
    points = sorted(rng.randrange(span) for _ in range(count))
    return [(p + MIN_GAP * (i + 1), rng.random() < 0.5) for i, p in enumerate(points)]


def stream_sha(sb: Sandbox, command: str, *, iterate: bool) -> tuple[str, int]:
    """Run ``command``; sha256 and size of its reassembled stdout (UTF-8)."""
    digest = hashlib.sha256()
    size = 0
    if iterate:
        handle = sb.run(command, timeout=0, wait=False)
        for chunk in handle:
            assert chunk.stream == "stdout", chunk
            # The SDK drops what it already has, so a jump forward is the one way to lose bytes.
            assert chunk.offset == size, f"bytes {size} to {chunk.offset} lost"
            data = chunk.data.encode()
            digest.update(data)
            size += len(data)
        result = handle.result
    else:
        result = sb.run(command, timeout=0)
        data = result.stdout.encode()
        digest.update(data)
        size = len(data)
    assert (result.exit_code, result.stderr) == (0, "")
    return digest.hexdigest(), size


class LossLog(logging.Filter):
    """Counts the handle's debug records (connections lost, duplicates dropped) and swallows
    them. A "connection lost" record holds the exception, whose traceback holds the handle and
    all its output: pytest's log capture (which also serves non-propagating loggers) would keep
    every run's output alive. A logger's filters run before any handler sees the record."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0
        self.duplicates = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.DEBUG:
            return True
        text = record.getMessage()
        if "connection lost" in text:
            self.lost += 1
        elif "dropped output already received" in text:
            self.duplicates += 1
        return False


@pytest.fixture
def loss_log() -> Iterator[LossLog]:
    logger = logging.getLogger("hutch.client")
    counter, level = LossLog(), logger.level
    logger.addFilter(counter)
    logger.setLevel(logging.DEBUG)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(level)


def run_with_cuts(
    sb: Sandbox,
    proxy: FaultProxy,
    loss_log: LossLog,
    command: str,
    expected: Expected,
    runs: int,
    seed: int,
) -> list[float]:
    """``runs`` runs of ``command`` with random cuts; returns each run's seconds."""
    # A clean run first: checks the expectation, and sizes the cut points by its wire bytes.
    before = proxy.exec_websockets
    assert proxy.pending_marks() == 0
    wire_before = proxy.down_bytes
    assert stream_sha(sb, command, iterate=True) == (expected.sha256, expected.size)
    wire = proxy.down_bytes - wire_before
    assert proxy.exec_websockets == before + 1, "the exec WebSocket did not go through the proxy"
    timings: list[float] = []
    for run in range(runs):
        rng = random.Random(seed * 1000 + run)
        marks = marks_for(rng, wire)
        cuts_before, lost_before = proxy.cuts, loss_log.lost
        proxy.cut_at(marks)
        t0 = time.perf_counter()
        got = stream_sha(sb, command, iterate=run % 2 == 0)
        timings.append(time.perf_counter() - t0)
        context = f"run {run} (seed {seed * 1000 + run}, marks {marks})"
        assert got == (expected.sha256, expected.size), f"{context}: output differs"
        assert proxy.pending_marks() == 0, f"{context}: not every cut happened"
        assert proxy.cuts - cuts_before == len(marks), context
        assert loss_log.lost - lost_before >= 1, f"{context}: the handle saw no cut"
    assert loss_log.duplicates == 0, "the server resent output the client already had"
    return timings


@pytest.mark.timeout(900 * TIME_SCALE)
def test_output_survives_random_cuts_100_runs(
    fault_sandbox: Sandbox, proxy: FaultProxy, expected_full: Expected, loss_log: LossLog
) -> None:
    """100 runs of 50 MB with 3-8 cuts each: the reassembled stdout is byte-identical."""
    timings = run_with_cuts(
        fault_sandbox,
        proxy,
        loss_log,
        f"cat {expected_full.path}",
        expected_full,
        RUNS,
        SEED,
    )
    print(
        f"\n{RUNS} runs of {expected_full.size} bytes: total {sum(timings):.1f} s, "
        f"median {sorted(timings)[len(timings) // 2]:.2f} s, max {max(timings):.2f} s, "
        f"{loss_log.lost} connection losses"
    )


@pytest.mark.timeout(300 * TIME_SCALE)
def test_live_generator_survives_random_cuts(
    fault_sandbox: Sandbox, proxy: FaultProxy, expected_full: Expected, loss_log: LossLog
) -> None:
    """The generator itself streamed (not a file), cut at random: same bytes as the file."""
    run_with_cuts(
        fault_sandbox,
        proxy,
        loss_log,
        generator(LINES_FULL),
        expected_full,
        RUNS_LIVE,
        SEED + 1,
    )


# -- a cut before the command started -------------------------------------------------------


def one_shot(trigger: str) -> tuple[list[int], Rule]:
    """A rule cutting once on the first exec WebSocket: at the server's first bytes
    (``"upgrade"``: the 101 response never arrives) or at the first bytes after the
    response's headers (``"started"``: the ``started`` message never arrives)."""
    fired: list[int] = []

    def rule(conn: Connection, direction: Direction, data: bytes) -> Action:
        if fired or direction != "down" or not conn.is_exec_websocket():
            return Action.FORWARD
        if trigger == "upgrade" or conn.down > 0:
            fired.append(conn.id)
            return Action.CUT
        return Action.FORWARD

    return fired, rule


def count_runs(client: SandboxClient, name: str, path: str) -> int:
    out = client.get_sandbox(name).run(f"cat {path} 2>/dev/null | wc -l").stdout
    return int(out.strip())


def test_cut_during_upgrade_runs_once_over_http(
    client: SandboxClient, fault_sandbox: Sandbox, proxy: FaultProxy
) -> None:
    """A cut during the upgrade happens before the command was sent: run() falls back to HTTP
    /execute and the command runs exactly once; a streaming run raises and runs nothing."""
    path = "/tmp/faults-upgrade-count"
    fired, rule = one_shot("upgrade")
    proxy.set_rule(rule)
    try:
        result = fault_sandbox.run(f"echo run >> {path}; echo done")
    finally:
        proxy.set_rule(None)
    assert fired, "the upgrade was not cut"
    assert (result.stdout, result.exit_code) == ("done\n", 0)
    assert count_runs(client, fault_sandbox.name, path) == 1

    path = "/tmp/faults-upgrade-stream"
    fired, rule = one_shot("upgrade")
    proxy.set_rule(rule)
    try:
        with pytest.raises(SandboxConnectionError):
            fault_sandbox.run(f"echo run >> {path}", wait=False)
    finally:
        proxy.set_rule(None)
    assert fired
    time.sleep(0.5 * TIME_SCALE)  # a command wrongly started would have written by now
    assert count_runs(client, fault_sandbox.name, path) == 0


def test_cut_before_started_never_runs_twice(
    client: SandboxClient, fault_sandbox: Sandbox, proxy: FaultProxy
) -> None:
    """A cut after ``execute`` reached the server but before ``started`` came back: the SDK
    raises (it may or may not run) and does not retry; re-running with the same client-supplied
    ``command_id`` attaches to the one command instead of starting a second."""
    path = "/tmp/faults-started-count"
    command = f"echo run >> {path}; echo done"
    command_id = f"faults-started-{random.randrange(1 << 30)}"
    fired, rule = one_shot("started")
    proxy.set_rule(rule)
    try:
        with pytest.raises(SandboxConnectionError, match="may or may not be running"):
            fault_sandbox.run(command, command_id=command_id)
    finally:
        proxy.set_rule(None)
    assert fired, "the connection was not cut before started"
    result = fault_sandbox.run(command, command_id=command_id)
    assert (result.stdout, result.exit_code) == ("done\n", 0)
    assert count_runs(client, fault_sandbox.name, path) == 1
    # Once more without the id: a new command, so a second line (the file is counted right).
    fault_sandbox.run(command)
    assert count_runs(client, fault_sandbox.name, path) == 2
