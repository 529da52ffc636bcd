"""The ``hutch`` command: ``hutch serve``, ``hutch image import|pull|list|rm|gc``,
``hutch keys create|list|revoke``, ``hutch workspaces list|quota``,
``hutch secrets set|list|rm``."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from hutch._cli_sandbox import sandbox_app, snapshot_app, template_app
from hutch.runtime._interface import NETWORK_MODES
from hutch.runtime.images import RegistryConfig
from hutch.runtime.runc._config import RuncConfig
from hutch.runtime.runc._network import DEFAULT_SUBNET, EgressConfig, HostPort
from hutch.server._config import SERVICE_DOMAIN, ServerConfig, default_data_dir

if TYPE_CHECKING:
    from hutch.server._admin import WorkspaceInfo
    from hutch.store import Database

T = TypeVar("T")

app = typer.Typer(
    help="hutch: a self-hosted sandbox server.", no_args_is_help=True, add_completion=False
)
image_app = typer.Typer(help="Manage the local image store.", no_args_is_help=True)
app.add_typer(image_app, name="image")
keys_app = typer.Typer(help="Manage API keys (each belongs to a workspace).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
ws_app = typer.Typer(help="Manage workspaces and their quotas.", no_args_is_help=True)
app.add_typer(ws_app, name="workspaces")
secrets_app = typer.Typer(
    help="Manage workspace secrets (for egress header rules; values are never shown).",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")
app.add_typer(sandbox_app, name="sandbox")
app.add_typer(template_app, name="template")
app.add_typer(snapshot_app, name="snapshot")

DataDir = typer.Option(
    None,
    "--data-dir",
    "-d",
    help="Server state directory [default: $HUTCH_DATA_DIR or /var/lib/hutch]",
)

DatabaseUrl = typer.Option(
    None,
    "--database-url",
    envvar="HUTCH_DATABASE_URL",
    help="SQLAlchemy async URL of the store, e.g. postgresql+asyncpg://… [default: SQLite in "
    "the data dir]",
)

DefaultRegistry = typer.Option(
    "docker.io",
    "--default-registry",
    envvar="HUTCH_DEFAULT_REGISTRY",
    help="Registry for image names without one (python:3.12-slim)",
)
RegistriesConf = typer.Option(
    None,
    "--registries-conf",
    envvar="HUTCH_REGISTRIES_CONF",
    help="registries.conf(5) for pulls: mirrors, blocked and insecure registries",
)
RegistryAuth = typer.Option(
    None,
    "--registry-auth",
    envvar="HUTCH_REGISTRY_AUTH",
    help="Registry credentials file (containers-auth.json or docker config.json format)",
)
InsecureRegistry = typer.Option(
    [],
    "--insecure-registry",
    help="Registry host[:port] reached over plain http or without TLS verification (repeatable)",
)


def _registry_config(
    default_registry: str,
    registries_conf: Path | None,
    registry_auth: Path | None,
    insecure_registry: list[str],
    pull: bool = True,
) -> RegistryConfig:
    from hutch.runtime.images import ImageError, normalize_registry

    for path in (registries_conf, registry_auth):
        if path is not None and not path.is_file():
            typer.echo(f"error: {path} is not a file", err=True)
            raise typer.Exit(2)
    try:
        hosts = [normalize_registry(h) for h in (default_registry, *insecure_registry)]
    except ImageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    return RegistryConfig(
        default_registry=hosts[0],
        registries_conf=registries_conf.absolute() if registries_conf else None,
        auth_file=registry_auth.absolute() if registry_auth else None,
        insecure_registries=tuple(hosts[1:]),
        enabled=pull,
    )


def _size(value: str, option: str) -> int:
    from hutch.runtime._resources import QuantityError, parse_memory

    try:
        return parse_memory(value, field=option, check_host=False)
    except QuantityError as exc:
        raise typer.BadParameter(str(exc)) from exc


def _cpu(value: str, option: str) -> int:
    from hutch.runtime._resources import QuantityError, parse_cpu

    try:
        return parse_cpu(value, check_host=False)
    except QuantityError as exc:
        raise typer.BadParameter(f"{option}: {exc}") from exc


def _default_proxy_config(text: str | None) -> dict[str, Any] | None:
    """``--default-proxy-config``: JSON or @FILE, checked as a template's default is."""
    if not text:
        return None
    try:
        raw = Path(text[1:]).read_text() if text.startswith("@") else text
        value = json.loads(raw)
    except (OSError, ValueError) as exc:
        typer.echo(f"error: --default-proxy-config: {exc}", err=True)
        raise typer.Exit(2) from exc
    if not isinstance(value, dict):
        typer.echo("error: --default-proxy-config: give a JSON object", err=True)
        raise typer.Exit(2)
    from hutch.server._errors import ApiError
    from hutch.server._schemas import default_proxy_config

    try:
        return default_proxy_config(value, "The default")
    except ApiError as exc:
        typer.echo(f"error: --default-proxy-config: {exc}", err=True)
        raise typer.Exit(2) from exc


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Address to listen on"),
    port: int = typer.Option(8080, help="Port to listen on"),
    data_dir: Path | None = DataDir,
    public_url: str | None = typer.Option(
        None, help="Base URL clients use to reach this server (default: from each request)"
    ),
    service_port: int = typer.Option(
        0,
        min=0,
        max=65535,
        help="Port serving service URLs, an origin apart from the API and web UI [default: "
        "any free port, printed at start]",
    ),
    service_public_url: str | None = typer.Option(
        None, help="Base URL clients reach the service port at (default: from each request)"
    ),
    service_domain: str | None = typer.Option(
        None,
        help="Give each service an origin of its own, <sandbox id>-<port>.DOMAIN (needs wildcard "
        "DNS to the service port; *.localhost works in browsers on this machine)",
    ),
    database_url: str | None = DatabaseUrl,
    log_level: str = typer.Option("info", help="uvicorn log level"),
    log_format: str = typer.Option(
        "json",
        help="Log lines on stderr: json (one object per line: each request, each sandbox "
        "lifecycle transition, every other message) or text",
    ),
    metrics_public: bool = typer.Option(
        False,
        "--metrics-public",
        help="Serve GET /metrics without an API key (for a Prometheus scraper on a private "
        "network) [default: it needs an admin key]",
    ),
    max_upload_bytes: int = typer.Option(
        ServerConfig.max_upload_bytes, min=1, help="Largest file upload accepted, in bytes"
    ),
    max_body_bytes: int = typer.Option(
        ServerConfig.max_body_bytes,
        min=1024,
        help="Largest request body of every route but uploads (control-plane JSON), in bytes",
    ),
    session_log_budget: int = typer.Option(
        ServerConfig.session_log_budget,
        min=0,
        help="Most bytes of command output kept in memory for all commands together; past it "
        "the output of the commands that finished first is forgotten first",
    ),
    storage_pool_size: str = typer.Option(
        "256Gi", help="Size of the sparse btrfs image holding all sandboxes' writable layers"
    ),
    default_storage: str = typer.Option(
        "10Gi", help="Disk limit of a sandbox whose template sets no storage"
    ),
    quota_sandboxes: int | None = typer.Option(
        None, min=0, help="Default quota: most sandboxes a workspace may hold [none]"
    ),
    quota_cpu: str | None = typer.Option(
        None, help='Default quota: most CPU a workspace may use at once, e.g. "8" [none]'
    ),
    quota_memory: str | None = typer.Option(
        None, help='Default quota: most memory a workspace may use at once, e.g. "16Gi" [none]'
    ),
    default_registry: str = DefaultRegistry,
    registries_conf: Path | None = RegistriesConf,
    registry_auth: Path | None = RegistryAuth,
    insecure_registry: list[str] = InsecureRegistry,
    pull: bool = typer.Option(
        True, "--pull/--no-pull", help="Pull images missing from the local store"
    ),
    default_image: str | None = typer.Option(
        None,
        envvar="HUTCH_DEFAULT_IMAGE",
        help="Image of sandboxes created without a template [default: none, such creates fail]",
    ),
    default_idle_ttl: int = typer.Option(
        600,
        min=0,
        help="Idle seconds after which a sandbox created without a template is stopped, when "
        "its create names no idle_ttl_seconds (0: never)",
    ),
    default_delete_after_stop: int = typer.Option(
        0,
        min=0,
        help="Seconds after a stop at which a sandbox created without a template is deleted, "
        "when its create names no delete_after_stop_seconds (0: never)",
    ),
    ttl_granularity: int = typer.Option(
        60,
        min=1,
        help="Lifetimes of sandboxes created without a template must be multiples of this "
        "many seconds (1: any)",
    ),
    default_network: str = typer.Option(
        "none",
        help="Network of templates (and template-less sandboxes) created without one: none "
        "(loopback only) or egress (outbound through NAT)",
    ),
    default_proxy_config: str | None = typer.Option(
        None,
        help="proxy_config of sandboxes whose create and template give none: JSON, or @FILE "
        'holding it, e.g. \'{"access_control": {"allow_list": ["pypi.org"]}}\' (access '
        "control only; a sandbox's own proxy_config replaces it)",
    ),
    egress_subnet: str = typer.Option(
        DEFAULT_SUBNET, help="IPv4 subnet of the egress bridge (must not overlap the host's)"
    ),
    egress_bridge: str = typer.Option(
        "hutch0", help="Host bridge of egress sandboxes (one per server)"
    ),
    dns: list[str] = typer.Option(
        [],
        "--dns",
        help="Nameserver for egress sandboxes (repeatable) [default: the host's, unless loopback]",
    ),
    allow_host_port: list[str] = typer.Option(
        [],
        "--allow-host-port",
        help="A host port egress sandboxes may reach: PORT, PORT/tcp or PORT/udp (repeatable)",
    ),
) -> None:
    """Run the API server."""
    import uvicorn

    from hutch.server import create_app

    if os.geteuid() != 0:
        typer.echo("hutch serve needs root (it runs runc containers)", err=True)
        raise typer.Exit(2)
    if default_image:
        from hutch.runtime.images import ImageError, normalize_reference

        try:
            default_image = normalize_reference(default_image)
        except ImageError as exc:
            typer.echo(f"error: --default-image: {exc}", err=True)
            raise typer.Exit(2) from exc
    from hutch.server import _logs

    if log_format not in _logs.LOG_FORMATS:
        typer.echo(f"--log-format {log_format!r}: use json or text", err=True)
        raise typer.Exit(2)
    fmt: _logs.LogFormat = "json" if log_format == "json" else "text"
    _logs.configure(fmt, log_level)
    if default_network not in NETWORK_MODES:
        typer.echo(f"--default-network {default_network!r}: use none or egress", err=True)
        raise typer.Exit(2)
    try:
        egress = EgressConfig(
            bridge=egress_bridge,
            subnet=egress_subnet,
            dns=tuple(dns),
            allow_host_ports=tuple(HostPort.parse(p) for p in allow_host_port),
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    default_proxy = _default_proxy_config(default_proxy_config)
    config = ServerConfig(
        data_dir=data_dir or default_data_dir(),
        host=host,
        port=port,
        public_url=public_url,
        database_url=database_url,
        max_upload_bytes=max_upload_bytes,
        max_body_bytes=max_body_bytes,
        session_log_budget=session_log_budget,
        runtime=RuncConfig(
            storage_pool_bytes=_size(storage_pool_size, "--storage-pool-size"), egress=egress
        ),
        default_storage_bytes=_size(default_storage, "--default-storage"),
        quota_sandboxes=quota_sandboxes,
        quota_cpu_millis=_cpu(quota_cpu, "--quota-cpu") if quota_cpu else None,
        quota_memory_bytes=_size(quota_memory, "--quota-memory") if quota_memory else None,
        registry=_registry_config(
            default_registry, registries_conf, registry_auth, insecure_registry, pull
        ),
        default_image=default_image or None,
        default_idle_ttl=default_idle_ttl,
        default_delete_after_stop=default_delete_after_stop,
        ttl_granularity=ttl_granularity,
        default_network="egress" if default_network == "egress" else "none",
        default_proxy_config=default_proxy,
        metrics_public=metrics_public,
    )
    from hutch.server._servers import DataDirBusy, lock_data_dir, run_servers

    # Before anything is opened or mounted: a second server on this data dir, or one that
    # cannot have its ports, exits here without touching what a running server set up.
    try:
        lock = lock_data_dir(config.data_dir)
    except DataDirBusy as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    try:
        api_sock = _listen(host, port)
    except OSError as exc:
        typer.echo(f"error: --port {port}: {exc}", err=True)
        raise typer.Exit(2) from exc
    try:
        service_sock = _listen(host, service_port)
    except OSError as exc:
        typer.echo(f"error: --service-port {service_port}: {exc}", err=True)
        raise typer.Exit(2) from exc
    config.service_port = service_sock.getsockname()[1]
    config.service_public_url = service_public_url
    if service_domain is not None:
        domain = service_domain.strip(".").lower()
        if not SERVICE_DOMAIN.fullmatch(domain):
            typer.echo(f"error: --service-domain {service_domain!r} is not a DNS name", err=True)
            raise typer.Exit(2)
        config.service_domain = domain
    app = create_app(config)
    settings: dict[str, Any] = {
        "log_level": log_level,
        # One formatter for every line on stderr; hutch.request replaces the access log.
        "log_config": _logs.log_config(fmt, log_level),
        "access_log": False,
        "ws": "websockets-sansio",
        "ws_max_size": 16 * 1024 * 1024,
        # No permessage-deflate: it cost ~30% of the server's CPU on output streams, and
        # compressed output makes far more bytes sit in socket buffers when a connection drops.
        "ws_per_message_deflate": False,
    }
    run_servers(
        uvicorn.Config(app, host=host, port=port, **settings),
        uvicorn.Config(app, lifespan="off", **settings),
        api_sock,
        service_sock,
    )
    lock.close()  # held until the lifespan's shutdown is over


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on connections accepted from a
    # socket whose proto says TCP; with 0, every answer written in two parts waits ~40 ms for
    # the client's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _store(data_dir: Path | None):  # type: ignore[no-untyped-def]
    from hutch.runtime.images import ImageStore

    return ImageStore((data_dir or default_data_dir()) / "images")


@image_app.command("import")
def image_import(name: str, path: Path, data_dir: Path | None = DataDir) -> None:
    """Import an OCI layout/archive, a `docker save` archive or a root-filesystem tarball."""
    from hutch.runtime.images import ImageError

    try:
        image = _store(data_dir).import_path(name, path)
    except ImageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"imported {image.name} ({image.digest[:19]}, {len(image.layers)} layers, "
        f"{image.size // 1024} KiB)"
    )


@image_app.command("pull")
def image_pull(
    name: str,
    data_dir: Path | None = DataDir,
    default_registry: str = DefaultRegistry,
    registries_conf: Path | None = RegistriesConf,
    registry_auth: Path | None = RegistryAuth,
    insecure_registry: list[str] = InsecureRegistry,
) -> None:
    """Pull an image from its registry (python:3.12-slim is docker.io/library/python:3.12-slim)."""
    import asyncio

    from hutch.runtime.images import ImageError, ImagePuller

    config = _registry_config(default_registry, registries_conf, registry_auth, insecure_registry)

    async def run() -> None:
        puller = ImagePuller(_store(data_dir), config)
        try:
            image = await puller.pull(name, progress=lambda m: typer.echo(m, err=True))
        finally:
            await puller.aclose()
        typer.echo(
            f"pulled {image.name} ({image.digest[:19]}, {len(image.layers)} layers, "
            f"{image.size // 1024} KiB)"
        )

    try:
        asyncio.run(run())
    except ImageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@image_app.command("list")
def image_list(data_dir: Path | None = DataDir) -> None:
    """List images in the local store."""
    for image in _store(data_dir).list():
        typer.echo(
            f"{image.name}\t{image.digest[:19]}\t{image.size // 1024} KiB\t{image.created_at}"
        )


@image_app.command("rm")
def image_rm(name: str, data_dir: Path | None = DataDir) -> None:
    """Remove an image (and layers no other image uses)."""
    from hutch.runtime.images import (
        ImageError,
        ImageNotFoundError,
        is_local_only,
        qualify_reference,
    )

    store = _store(data_dir)
    try:
        try:
            store.remove(name)
        except ImageNotFoundError:
            # Pulled images are stored under their qualified name (docker.io/library/...).
            if is_local_only(name):
                raise
            qualified = qualify_reference(name)
            store.remove(qualified)
            name = qualified
    except ImageError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    typer.echo(f"removed {name}")


@image_app.command("gc")
def image_gc(data_dir: Path | None = DataDir) -> None:
    """Free stored layers no image uses (layers of running sandboxes are kept)."""
    result = _store(data_dir).gc()
    kept = f"; {result.in_use} unused layers kept while sandboxes use them" if result.in_use else ""
    typer.echo(f"freed {result.freed_layers} layers ({result.freed_bytes // 1024} KiB){kept}")


def _admin(
    data_dir: Path | None, database_url: str | None, action: Callable[[Database], Awaitable[T]]
) -> T:
    """Run ``action`` on the server's database (``database_url``, else the data dir's SQLite),
    migrated first; errors exit 1 with a message."""
    import asyncio

    from hutch.server._admin import AdminError
    from hutch.store import Database

    async def run() -> T:
        db = (
            Database(database_url)
            if database_url
            else Database.in_dir(data_dir or default_data_dir())
        )
        try:
            await db.migrate()
            return await action(db)
        finally:
            await db.aclose()

    try:
        return asyncio.run(run())
    except AdminError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@keys_app.command("create")
def keys_create(
    workspace: str = typer.Option("default", "--workspace", "-w", help="Workspace of the key"),
    name: str = typer.Option("", help="A label for the key"),
    admin: bool = typer.Option(False, "--admin", help="An admin key"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Create a key and print it (it is stored hashed: this is the only time it is shown)."""
    from hutch.server._admin import create_key

    key, key_id = _admin(data_dir, database_url, lambda db: create_key(db, workspace, name, admin))
    typer.echo(key)
    typer.echo(
        f"key id {key_id} in workspace {workspace!r}; a running server accepts it within a second",
        err=True,
    )


@keys_app.command("list")
def keys_list(
    workspace: str | None = typer.Option(None, "--workspace", "-w", help="Only this workspace"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """List keys (ids, never the keys themselves)."""
    from hutch.server._admin import list_keys

    for k in _admin(data_dir, database_url, lambda db: list_keys(db, workspace)):
        flags = " admin" if k.is_admin else ""
        typer.echo(f"{k.id}  {k.workspace}  {k.created_at:%Y-%m-%d %H:%M}  {k.name}{flags}")


@keys_app.command("revoke")
def keys_revoke(
    key_id: str, data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl
) -> None:
    """Delete a key; a running server refuses it within a second."""
    from hutch.server._admin import revoke_key

    _admin(data_dir, database_url, lambda db: revoke_key(db, key_id))
    typer.echo(f"revoked {key_id}")


def _show(w: WorkspaceInfo) -> str:
    def limit(v: int | None, fmt: Callable[[int], str]) -> str:
        return "-" if v is None else fmt(v)

    return (
        f"{w.name}  sandboxes {w.sandboxes}/{limit(w.max_sandboxes, str)}  "
        f"cpu {limit(w.max_cpu_millis, lambda m: f'{m / 1000:g}')}  "
        f"memory {limit(w.max_memory_bytes, lambda b: f'{b // 1024**2}Mi')}"
    )


@ws_app.command("list")
def workspaces_list(
    data_dir: Path | None = DataDir, database_url: str | None = DatabaseUrl
) -> None:
    """Workspaces with their sandbox count and quotas ("-": the server's default)."""
    from hutch.server._admin import list_workspaces

    for w in _admin(data_dir, database_url, list_workspaces):
        typer.echo(_show(w))


@ws_app.command("quota")
def workspaces_quota(
    workspace: str,
    sandboxes: int | None = typer.Option(None, min=0, help="Most sandboxes at once"),
    cpu: str | None = typer.Option(None, help='Most CPU in use at once, e.g. "4" or "1500m"'),
    memory: str | None = typer.Option(None, help='Most memory in use at once, e.g. "8Gi"'),
    clear: bool = typer.Option(False, "--clear", help="Unset every limit first"),
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Set a workspace's quotas (a create past one answers 429 QuotaExceeded)."""
    from hutch.runtime._resources import QuantityError, parse_cpu, parse_memory
    from hutch.server._admin import set_quota

    try:
        cpu_millis = parse_cpu(cpu, check_host=False) if cpu is not None else None
        memory_bytes = parse_memory(memory, check_host=False) if memory is not None else None
    except QuantityError as exc:
        raise typer.BadParameter(str(exc)) from exc
    info = _admin(
        data_dir,
        database_url,
        lambda db: set_quota(
            db,
            workspace,
            sandboxes=sandboxes,
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            clear=clear,
        ),
    )
    typer.echo(_show(info))


def _secret_action(
    workspace: str, action: Callable[[Database, str], Awaitable[T]]
) -> Callable[[Database], Awaitable[T]]:
    """``action`` on the id of ``workspace``; a refused name or value exits 1 with the reason."""
    from hutch.server._admin import AdminError
    from hutch.server._secrets_store import SecretError, workspace_id

    async def run(db: Database) -> T:
        try:
            return await action(db, await workspace_id(db, workspace))
        except SecretError as exc:
            raise AdminError(str(exc)) from exc

    return run


WorkspaceOption = typer.Option("default", "--workspace", "-w", help="Workspace of the secret")


@secrets_app.command("set")
def secrets_set(
    name: str,
    workspace: str = WorkspaceOption,
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Create or replace a secret; the value is read from standard input (a prompt on a
    terminal), never from the command line, which other users can read in ps."""
    import getpass
    import sys

    from hutch.server._secrets_store import SecretBox, set_secret

    if sys.stdin.isatty():
        value = getpass.getpass(f"value of {name}: ")
    else:
        value = sys.stdin.read()
        # A trailing newline is how echo and files end; a value never means it.
        value = value[:-1] if value.endswith("\n") else value
    box = SecretBox.in_dir(data_dir or default_data_dir())
    info = _admin(
        data_dir,
        database_url,
        _secret_action(workspace, lambda db, ws: set_secret(db, box, ws, name, value)),
    )
    typer.echo(f"set {info.name} in workspace {workspace!r}")


@secrets_app.command("list")
def secrets_list(
    workspace: str = WorkspaceOption,
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Names and when each was set (never the values)."""
    from hutch.server._secrets_store import list_secrets

    for i in _admin(data_dir, database_url, _secret_action(workspace, list_secrets)):
        when = f"created {i.created_at:%Y-%m-%d %H:%M}  updated {i.updated_at:%Y-%m-%d %H:%M}"
        typer.echo(f"{i.name}  {when}")


@secrets_app.command("rm")
def secrets_rm(
    name: str,
    workspace: str = WorkspaceOption,
    data_dir: Path | None = DataDir,
    database_url: str | None = DatabaseUrl,
) -> None:
    """Delete a secret (sandboxes already given its value keep it until their proxy_config
    is next set)."""
    from hutch.server._admin import AdminError
    from hutch.server._secrets_store import delete_secret

    async def rm(db: Database, ws: str) -> None:
        if not await delete_secret(db, ws, name):
            raise AdminError(f"no secret {name!r} in workspace {workspace!r}")

    _admin(data_dir, database_url, _secret_action(workspace, rm))
    typer.echo(f"removed {name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
