"""An "internet" for egress tests: a network namespace of its own holding addresses of
198.51.100.0/24 (TEST-NET-2), reached from the host by a veth, with an upstream server in it
and names for it in the host's ``/etc/hosts``."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from hutch.runtime.runc._network import EgressConfig, teardown_host
from tests.conftest import HUTCH, Server, start_server, stop_server

NET = "198.51.100"


def sh(*argv: str, check: bool = True) -> str:
    return subprocess.run(argv, check=check, capture_output=True, text=True).stdout


@contextmanager
def upstream_namespace(
    tag: str, lasts: Sequence[int], hosts_lines: str, script: str, *args: str
) -> Iterator[str]:
    """Namespace ``hutch-up-<tag>`` with ``NET.<last>`` for each of ``lasts``, running
    ``python -c script *args`` (which prints ``ready`` once serving, and ends when its stdin
    closes); ``hosts_lines`` are in the host's ``/etc/hosts`` meanwhile. Yields its name."""
    ns, host_if, peer_if = f"hutch-up-{tag}", f"hue{tag}", f"hup{tag}"
    hosts = Path("/etc/hosts")
    sh("ip", "netns", "add", ns)
    upstream = None
    added = False
    try:
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", peer_if)
        sh("ip", "link", "set", peer_if, "netns", ns)
        sh("ip", "addr", "add", f"{NET}.1/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        for last in lasts:
            sh("ip", "-n", ns, "addr", "add", f"{NET}.{last}/24", "dev", peer_if)
        sh("ip", "-n", ns, "link", "set", peer_if, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        upstream = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script, *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert upstream.stdout is not None and upstream.stdout.readline() == "ready\n"
        with hosts.open("a") as f:
            f.write(hosts_lines)
        added = True
        yield ns
    finally:
        if added:
            hosts.write_text(hosts.read_text().replace(hosts_lines, ""))
        if upstream is not None:
            upstream.kill()
            upstream.wait()
            for pipe in (upstream.stdin, upstream.stdout):
                if pipe is not None:
                    pipe.close()
        sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", host_if, check=False)


@contextmanager
def egress_bridge(bridge: str) -> Iterator[None]:
    """Afterwards: the test servers' bridge and firewall removed, ``ip_forward`` as it was."""
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        yield
    finally:
        teardown_host(EgressConfig(bridge=bridge))
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forwarding)


def egress_server(
    tmp: Path, python_tar: Path, template: str, *args: str, env: dict[str, str] | None = None
) -> Server:
    """A server on ``tmp/data`` (``hutch serve *args``) whose store holds ``local/python`` and
    which has an egress template of it named ``template``."""
    data = tmp / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/python", str(python_tar), "--data-dir", str(data)],
        check=True, capture_output=True,
    )  # fmt: skip
    srv = start_server(data, *args, env=env)
    with srv.http() as http:
        r = http.post(
            "/v2/sandboxes/templates",
            json={"name": template, "image": "local/python", "network": "egress"},
        )
    if r.status_code != 201:
        stop_server(srv)
        raise AssertionError(r.text)
    return srv
