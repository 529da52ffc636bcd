"""Control-plane commands: sandboxes (``ls``, ``create``, ``rm``, ``stop``, ``start``,
``snapshot``), templates and snapshots."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from hutch._cli_sandbox._common import (
    Column,
    JsonOption,
    ago,
    conn,
    connection_callback,
    errors,
    fail,
    human_bytes,
    parse_duration,
    parse_pairs,
    parse_size,
    print_json,
    status_style,
    stderr_is_tty,
    table,
    until,
)
from hutch._cli_sandbox._progress import StatusDisplay

if TYPE_CHECKING:
    from collections.abc import Iterator
    from contextlib import AbstractContextManager

    from hutch.client import Sandbox, SandboxClient, SandboxTemplate, Snapshot

T = TypeVar("T")

sandbox_app = typer.Typer(
    help="Sandboxes on a hutch server (HUTCH_ENDPOINT, HUTCH_API_KEY).",
    no_args_is_help=True,
    callback=connection_callback,
)
template_app = typer.Typer(
    help="Templates on a hutch server: the image and limits sandboxes are made from.",
    no_args_is_help=True,
    callback=connection_callback,
)
snapshot_app = typer.Typer(
    help="Snapshots on a hutch server: saved sandbox file systems to boot from.",
    no_args_is_help=True,
    callback=connection_callback,
)


def _spinner(message: str) -> AbstractContextManager[Any]:
    """A spinner on stderr while a slow call runs (nothing when stderr is not a terminal)."""
    from contextlib import nullcontext

    if not stderr_is_tty():
        return nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(message)


# -- JSON shapes (stable keys) ----------------------------------------------------------------


def sandbox_json(sb: Sandbox) -> dict[str, Any]:
    return {
        "name": sb.name,
        "id": sb.id,
        "template": sb.template_name or None,
        "snapshot_id": sb.snapshot_id,
        "status": sb.status,
        "status_message": sb.status_message,
        "created_at": sb.created_at,
        "expires_at": sb.expires_at,
        "ttl_seconds": sb.ttl_seconds,
        "idle_ttl_seconds": sb.idle_ttl_seconds,
        "labels": sb.labels,
        "persistent": sb.persistent,
    }


def template_json(t: SandboxTemplate) -> dict[str, Any]:
    return {
        "name": t.name,
        "id": t.id,
        "image": t.image,
        "cpu": t.resources.cpu,
        "memory": t.resources.memory,
        "storage": t.resources.storage,
        "network": t.network,
        "created_at": t.created_at,
    }


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    return {
        "id": s.id,
        "name": s.name,
        "status": s.status,
        "status_message": s.status_message,
        "tags": s.tags,
        "fs_capacity_bytes": s.fs_capacity_bytes,
        "fs_used_bytes": s.fs_used_bytes,
        "docker_image": s.docker_image,
        "source_sandbox_id": s.source_sandbox_id,
        "created_at": s.created_at,
    }


def _origin(sb: Sandbox) -> str:
    if sb.template_name:
        return sb.template_name
    if sb.snapshot_id:
        return f"snapshot {sb.snapshot_id[:12]}"
    return "(default image)"


def _expiry(sb: Sandbox) -> str:
    expires = until(sb.expires_at)
    if expires is not None:
        return expires
    if sb.idle_ttl_seconds:
        return f"idle {sb.idle_ttl_seconds // 60}m"
    return "never"


SANDBOX_COLUMNS: list[Column[Sandbox]] = [
    ("NAME", lambda sb: f"[bold]{sb.name}[/]"),
    ("ID", lambda sb: (sb.id or "-")[:12]),
    ("TEMPLATE/SNAPSHOT", _origin),
    ("STATUS", lambda sb: status_style(sb.status)),
    ("CREATED", lambda sb: ago(sb.created_at)),
    ("EXPIRES", _expiry),
]
TEMPLATE_COLUMNS: list[Column[SandboxTemplate]] = [
    ("NAME", lambda t: f"[bold]{t.name}[/]"),
    ("IMAGE", lambda t: t.image),
    ("CPU", lambda t: t.resources.cpu),
    ("MEMORY", lambda t: t.resources.memory),
    ("STORAGE", lambda t: t.resources.storage or "-"),
    ("NETWORK", lambda t: t.network or "-"),
    ("CREATED", lambda t: ago(t.created_at)),
]
SNAPSHOT_COLUMNS: list[Column[Snapshot]] = [
    ("NAME", lambda s: f"[bold]{s.name}[/]"),
    ("ID", lambda s: s.id[:12]),
    ("TAGS", lambda s: ",".join(s.tags) or "-"),
    ("STATUS", lambda s: status_style(s.status)),
    ("USED", lambda s: human_bytes(s.fs_used_bytes)),
    ("IMAGE", lambda s: s.docker_image or "-"),
    ("CREATED", lambda s: ago(s.created_at)),
]


def show(
    items: list[T],
    as_json: bool,
    to_json: Callable[[T], dict[str, Any]],
    columns: list[Column[T]],
) -> None:
    """``items`` as a JSON list, or as a table of ``columns``."""
    if as_json:
        print_json([to_json(item) for item in items])
    else:
        from rich.console import Console

        Console().print(table(columns, items))


def _each(names: list[str], action: Callable[[str], object], as_json: bool) -> None:
    """Run ``action`` on every name; print each name done (``--json``: a list of
    ``{"name", "ok", "error"}``), report each failure on its own stderr line, and exit 1 if
    any failed (the others are still done)."""
    from hutch.client import SandboxClientError

    results: list[dict[str, Any]] = []
    for name in names:
        try:
            action(name)
        except SandboxClientError as exc:
            message = " ".join(str(exc).split())
            typer.echo(f"error: {message}", err=True)
            results.append({"name": name, "ok": False, "error": message})
        else:
            if not as_json:
                typer.echo(name)
            results.append({"name": name, "ok": True, "error": None})
    if as_json:
        print_json(results)
    if not all(r["ok"] for r in results):
        raise typer.Exit(1)


# -- sandbox ----------------------------------------------------------------------------------


@sandbox_app.command("ls")
def sandbox_ls(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List sandboxes."""
    with errors(), conn(ctx).client() as client:
        sandboxes = sorted(client.list_sandboxes(), key=lambda s: s.created_at or "")
    show(sandboxes, as_json, sandbox_json, SANDBOX_COLUMNS)


@sandbox_app.command("create")
def sandbox_create(
    ctx: typer.Context,
    template: str | None = typer.Option(None, "--template", "-t", help="Template to use"),
    snapshot: str | None = typer.Option(
        None, "--snapshot", "-s", help="Snapshot to boot from: id, name:tag or name"
    ),
    name: str | None = typer.Option(None, "--name", "-n", help="Its name [default: generated]"),
    vcpus: int | None = typer.Option(None, "--vcpus", min=1, help="CPUs (over the template's)"),
    memory: str | None = typer.Option(None, "--memory", help="Memory limit, e.g. 1Gi"),
    storage: str | None = typer.Option(None, "--storage", help="Disk limit, e.g. 10Gi"),
    idle_ttl: str | None = typer.Option(
        None, "--idle-ttl", help="Stop after this long without activity (10m, 1h; 0: never)"
    ),
    ttl: str | None = typer.Option(None, "--ttl", help="Delete this long after creation (1h)"),
    label: list[str] = typer.Option([], "--label", "-l", help="KEY=VALUE label (repeatable)"),
    timeout: int = typer.Option(120, "--timeout", min=1, help="Seconds to wait until ready"),
    as_json: bool = JsonOption,
) -> None:
    """Create a sandbox, wait until it is ready and print its name."""
    if template and snapshot:
        fail("give --template or --snapshot, not both", 2)
    labels = parse_pairs(label, "--label")
    mem_bytes = parse_size(memory, "--memory") if memory else None
    fs_bytes = parse_size(storage, "--storage") if storage else None
    idle = parse_duration(idle_ttl, "--idle-ttl") if idle_ttl is not None else None
    life = parse_duration(ttl, "--ttl") if ttl is not None else None
    with errors(), conn(ctx).client() as client:
        # Created without the server waiting, so the wait below can show the server's progress
        # (image pull, unpacking) as it goes.
        created = client.create_sandbox(
            template,
            snapshot=snapshot,
            name=name,
            wait_for_ready=False,
            idle_ttl_seconds=idle,
            ttl_seconds=life,
            labels=labels or None,
            vcpus=vcpus,
            mem_bytes=mem_bytes,
            fs_capacity_bytes=fs_bytes,
        )
        sb = _until_ready(client, created.name, timeout)
    if as_json:
        print_json(sandbox_json(sb))
    else:
        typer.echo(sb.name)


#: Seconds between two status polls while a sandbox provisions.
POLL_INTERVAL = 0.2


def _until_ready(client: SandboxClient, name: str, timeout: int) -> Sandbox:
    """Poll the sandbox's status, showing the server's message, until it is ready.

    As on a create the server waits for: a failed sandbox is deleted (the caller gets the
    error, nothing is kept) and its message is the error; one still provisioning after
    ``timeout`` seconds is left to go on.
    """
    import time

    from hutch.client import SandboxClientError

    deadline = time.monotonic() + timeout
    with StatusDisplay(f"creating {name}…") as display:
        while True:
            status = client.get_sandbox_status(name)
            if status.status == "ready":
                return client.get_sandbox(name)
            if status.status == "failed":
                with suppress(SandboxClientError):
                    client.delete_sandbox(name)
                fail(status.status_message or "Sandbox provisioning failed")
            if time.monotonic() >= deadline:
                last = (
                    f"{status.status}: {status.status_message}"
                    if status.status_message
                    else status.status
                )
                fail(
                    f"Sandbox '{name}' not ready after {timeout}s (last status: {last}); it "
                    f"keeps provisioning: watch it with hutch sandbox ls, or delete it with "
                    f"hutch sandbox rm {name}"
                )
            display.show(status.status_message or f"{name}: {status.status}")
            time.sleep(POLL_INTERVAL)


@sandbox_app.command("rm")
def sandbox_rm(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Sandboxes to delete"),
    as_json: bool = JsonOption,
) -> None:
    """Delete sandboxes (their files are gone; snapshot first to keep them)."""
    with errors(), conn(ctx).client() as client:
        _each(names, client.delete_sandbox, as_json)


@sandbox_app.command("stop")
def sandbox_stop(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Sandboxes to stop"),
    as_json: bool = JsonOption,
) -> None:
    """Stop sandboxes: their commands end, CPU and memory are freed, files are kept."""
    with errors(), conn(ctx).client() as client:
        _each(names, client.stop_sandbox, as_json)


@sandbox_app.command("start")
def sandbox_start(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Sandboxes to start"),
    timeout: int = typer.Option(120, "--timeout", min=1, help="Seconds to wait until ready"),
    as_json: bool = JsonOption,
) -> None:
    """Start stopped sandboxes and wait until they are ready."""
    with errors(), conn(ctx).client() as client, _spinner("starting…"):
        _each(names, lambda name: client.start_sandbox(name, timeout=timeout), as_json)


@sandbox_app.command("snapshot")
def sandbox_snapshot(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The sandbox"),
    snapshot_name: str = typer.Argument(..., help="Name of the new snapshot"),
    tag: str | None = typer.Option(None, "--tag", help="Tag within the name [default: latest]"),
    timeout: int = typer.Option(300, "--timeout", min=1, help="Seconds to wait until ready"),
    as_json: bool = JsonOption,
) -> None:
    """Capture a sandbox's files as a snapshot and print its id."""
    with errors(), conn(ctx).client() as client, _spinner(f"capturing {name}…"):
        snap = client.capture_snapshot(name, snapshot_name, tag=tag, timeout=timeout)
    if as_json:
        print_json(snapshot_json(snap))
    else:
        typer.echo(snap.id)


# -- template ---------------------------------------------------------------------------------


@template_app.command("ls")
def template_ls(ctx: typer.Context, as_json: bool = JsonOption) -> None:
    """List templates."""
    with errors(), conn(ctx).client() as client:
        templates = client.list_templates()
    show(templates, as_json, template_json, TEMPLATE_COLUMNS)


@template_app.command("create")
def template_create(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The template's name"),
    image: str = typer.Argument(..., help="Its image, e.g. python:3.12-slim"),
    cpu: str = typer.Option("500m", "--cpu", help="CPU limit of its sandboxes (1, 500m)"),
    memory: str = typer.Option("512Mi", "--memory", help="Memory limit of its sandboxes"),
    storage: str | None = typer.Option(None, "--storage", help="Disk limit of its sandboxes"),
    network: str | None = typer.Option(
        None, "--network", help="none (loopback only) or egress [default: the server's]"
    ),
    as_json: bool = JsonOption,
) -> None:
    """Create a template (the server pulls the image first if it does not have it)."""
    with errors(), conn(ctx).client() as client, _spinner(f"preparing {image}…"):
        t = client.create_template(
            name, image, cpu=cpu, memory=memory, storage=storage, network=network
        )
    if as_json:
        print_json(template_json(t))
    else:
        typer.echo(t.name)


@template_app.command("rm")
def template_rm(
    ctx: typer.Context,
    names: list[str] = typer.Argument(..., help="Templates to delete"),
    as_json: bool = JsonOption,
) -> None:
    """Delete templates (refused while sandboxes use one)."""
    with errors(), conn(ctx).client() as client:
        _each(names, client.delete_template, as_json)


# -- snapshot ---------------------------------------------------------------------------------


def _all_snapshots(list_page: Callable[[int, int], list[Snapshot]]) -> Iterator[Snapshot]:
    """Every snapshot, page by page (the API answers at most 500 at a time)."""
    offset, page = 0, 500
    while True:
        items = list_page(page, offset)
        yield from items
        if len(items) < page:
            return
        offset += page


@snapshot_app.command("ls")
def snapshot_ls(
    ctx: typer.Context,
    name_contains: str | None = typer.Option(None, "--filter", help="Names containing this"),
    as_json: bool = JsonOption,
) -> None:
    """List snapshots, newest first."""
    with errors(), conn(ctx).client() as client:
        snaps = list(
            _all_snapshots(
                lambda limit, offset: client.list_snapshots(
                    name_contains=name_contains, limit=limit, offset=offset
                )
            )
        )
    show(snaps, as_json, snapshot_json, SNAPSHOT_COLUMNS)


@snapshot_app.command("rm")
def snapshot_rm(
    ctx: typer.Context,
    refs: list[str] = typer.Argument(..., help="Snapshots to delete: id, name:tag or name"),
    as_json: bool = JsonOption,
) -> None:
    """Delete snapshots (sandboxes booted from one keep their files)."""
    with errors(), conn(ctx).client() as client:
        _each(refs, client.delete_snapshot, as_json)
