"""Network modes over the real server: the template field, bad values, ``--default-network``,
sandboxes following their template, orphans after a restart, and the host left clean.

Each server here has a bridge and subnet of its own (never ``hutch0``). Host-side facts come from
the kernel and the data directory, not from the server.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hutch.runtime.runc._network import EgressConfig, teardown_host
from tests.conftest import (
    HUTCH,
    Server,
    remove_all_sandboxes,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.root


def _sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def _net_args(bridge: str) -> list[str]:
    return [
        "--egress-bridge",
        bridge,
        "--egress-subnet",
        f"10.253.{secrets.randbelow(250) + 1}.0/24",
    ]


def _start(tmp: Path, busybox_tar: Path, *extra: str) -> Server:
    data = tmp / "data"
    data.mkdir()
    subprocess.run(
        [*HUTCH, "image", "import", "local/busybox", str(busybox_tar), "--data-dir", str(data)],
        check=True,
        capture_output=True,
    )
    return start_server(data, *extra)


def _own_bridge() -> Iterator[str]:
    """A bridge name of the test's own; whatever a failed test leaves of it is removed after,
    and IPv4 forwarding (which the bridge plugin turns on) is put back as it was."""
    name = f"hnt{secrets.token_hex(3)}"
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    try:
        yield name
    finally:
        teardown_host(EgressConfig(bridge=name))
        Path("/proc/sys/net/ipv4/ip_forward").write_text(forwarding)


bridge = pytest.fixture(scope="module")(_own_bridge)
own_bridge = pytest.fixture(_own_bridge)


@pytest.fixture(scope="module")
def net_server(
    tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path, bridge: str
) -> Iterator[Server]:
    """A server with the default network mode (none) and an egress bridge of its own."""
    srv = _start(tmp_path_factory.mktemp("net-server"), busybox_tar, *_net_args(bridge))
    try:
        yield srv
    finally:
        stop_server(srv)
        remove_all_sandboxes(srv.data_dir)


def _template(srv: Server, network: object = None) -> tuple[int, dict[str, object]]:
    body: dict[str, object] = {"name": f"net-{uuid.uuid4().hex[:8]}", "image": "local/busybox"}
    if network is not None:
        body["network"] = network
    with srv.http() as http:
        r = http.post("/v2/sandboxes/templates", json=body)
    return r.status_code, r.json()


def _interfaces(srv: Server, template: str) -> str:
    with srv.client() as client, client.sandbox(template) as sb:
        return sb.run("ls /sys/class/net").stdout


def test_template_network_is_stored_and_answered(net_server: Server) -> None:
    """``network`` given is kept and answered by create, get and list; absent, the server's
    default (none)."""
    code, egress = _template(net_server, "egress")
    assert code == 201 and egress["network"] == "egress"
    code, plain = _template(net_server)
    assert code == 201 and plain["network"] == "none"
    with net_server.http() as http:
        assert http.get(f"/v2/sandboxes/templates/{egress['name']}").json()["network"] == "egress"
        listed = {
            t["name"]: t["network"] for t in http.get("/v2/sandboxes/templates").json()["templates"]
        }
    assert listed[str(egress["name"])] == "egress" and listed[str(plain["name"])] == "none"


@pytest.mark.parametrize("bad", ["bridge", "EGRESS", "", 5, ["egress"]])
def test_bad_network_is_a_422_in_the_envelope(net_server: Server, bad: object) -> None:
    """Anything but "none" or "egress" answers 422 ValidationError naming the field and the
    values to use; nothing is created."""
    code, body = _template(net_server, bad)
    assert code == 422, body
    detail = body["detail"]
    assert isinstance(detail, dict) and detail["error"] == "ValidationError"
    assert "network" in detail["message"]
    if isinstance(bad, str):
        assert "'none'" in detail["message"] and "'egress'" in detail["message"]
    assert net_server.alive()


def test_sandboxes_follow_their_template(net_server: Server) -> None:
    """A sandbox of an egress template has eth0 with an address of the server's subnet; one of a
    none template has only lo."""
    _, egress = _template(net_server, "egress")
    _, plain = _template(net_server, "none")
    with net_server.client() as client, client.sandbox(str(egress["name"])) as sb:
        assert sb.run("ls /sys/class/net").stdout == "eth0\nlo\n"
        route = sb.run("ip -4 route show default").stdout
        assert route.startswith("default via 10.253.")
    assert _interfaces(net_server, str(plain["name"])) == "lo\n"


def test_sdk_create_template_takes_the_network(net_server: Server) -> None:
    """The hutch SDK's ``create_template(network=...)`` sets the mode and reads it back."""
    name = f"net-{uuid.uuid4().hex[:8]}"
    with net_server.client() as client:
        tpl = client.create_template(name, "local/busybox", network="egress")
        assert tpl.network == "egress"
        assert client.get_template(name).network == "egress"
    assert _interfaces(net_server, name) == "eth0\nlo\n"


def test_default_network_flag(tmp_path: Path, busybox_tar: Path, own_bridge: str) -> None:
    """``--default-network egress``: templates made without ``network`` are egress, and their
    sandboxes get an interface; an explicit "none" still wins."""
    bridge = own_bridge
    srv = _start(tmp_path, busybox_tar, "--default-network", "egress", *_net_args(bridge))
    try:
        _, tpl = _template(srv)
        assert tpl["network"] == "egress"
        assert _interfaces(srv, str(tpl["name"])) == "eth0\nlo\n"
        _, plain = _template(srv, "none")
        assert plain["network"] == "none"
    finally:
        stop_server(srv)
        remove_all_sandboxes(srv.data_dir)
    assert not Path(f"/sys/class/net/{bridge}").exists()


def test_orphan_egress_sandbox_is_cleaned_after_restart(
    tmp_path: Path, busybox_tar: Path, own_bridge: str
) -> None:
    """An egress sandbox whose record is gone when the server starts is removed with its network
    (CNI DEL: veth, address, NAT rules; the namespace); on shutdown, with no sandbox left, the
    bridge and hutch's chains go too."""
    bridge = own_bridge
    srv = _start(tmp_path, busybox_tar, *_net_args(bridge))
    try:
        _, tpl = _template(srv, "egress")
        with srv.client() as client:
            sb = client.create_sandbox(str(tpl["name"]))
        state = json.loads((srv.data_dir / "cni" / f"{sb.id}.json").read_text())
        address = state["result"]["ips"][0]["address"].split("/")[0]
        veth = next(
            i["name"] for i in state["result"]["interfaces"] if i["name"].startswith("veth")
        )
        netns = srv.data_dir / "netns" / str(sb.id)
        ipam = srv.data_dir / "cni" / "ipam" / "hutch" / address
        assert netns.exists() and ipam.exists() and Path(f"/sys/class/net/{veth}").exists()
        stop_server(srv)
        # Running sandboxes keep their protection while the server is down.
        assert f"HUTCH-IN-{bridge}" in _sh("iptables", "-S")
        with sqlite3.connect(srv.data_dir / "hutch.db") as db:
            db.execute("DELETE FROM sandboxes WHERE id = ?", (sb.id,))
        srv = start_server(srv.data_dir, *_net_args(bridge))
        assert not netns.exists() and not ipam.exists()
        assert not Path(f"/sys/class/net/{veth}").exists()
        assert str(sb.id) not in _sh("iptables", "-t", "nat", "-S")
        with srv.http() as http:
            assert http.get(f"/v2/sandboxes/templates/{tpl['name']}").json()["network"] == "egress"
    finally:
        stop_server(srv)
        remove_all_sandboxes(srv.data_dir)
    assert bridge not in _sh("iptables", "-S")
    assert not Path(f"/sys/class/net/{bridge}").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--default-network", "wide"], "--default-network"),
        (["--egress-subnet", "10.0.0.0/33"], "--egress-subnet"),
        (["--egress-bridge", "this-name-is-too-long"], "--egress-bridge"),
        (["--allow-host-port", "99999"], "PORT/udp"),
        (["--dns", "resolver.example"], "--dns"),
    ],
)
def test_bad_network_options_stop_the_server(tmp_path: Path, args: list[str], message: str) -> None:
    """``hutch serve`` refuses bad network options before starting, saying which and how."""
    proc = subprocess.run(
        [*HUTCH, "serve", "--port", "0", "--data-dir", str(tmp_path / "data"), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert message in proc.stderr
