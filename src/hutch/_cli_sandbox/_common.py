"""What every ``hutch sandbox|template|snapshot`` command shares: where the server is, how
errors and data are printed, and the parsers of sizes, durations and ``KEY=VALUE`` pairs.

Nothing here (or anywhere in this package) imports server, runtime or store code: the CLI is a
client of the HTTP API only, configured by ``HUTCH_ENDPOINT``/``HUTCH_API_KEY``.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias, TypeVar

import typer

if TYPE_CHECKING:
    from rich.table import Table

    from hutch.client import AsyncSandbox, AsyncSandboxClient, Sandbox, SandboxClient

T = TypeVar("T")

#: Appended to ``--endpoint`` (the server root, as ``HUTCH_ENDPOINT``) to reach the API.
API_PATH = "/v2/sandboxes"

JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead")


@dataclass(frozen=True)
class Connection:
    """The server the commands talk to (``None``: the SDK reads the environment)."""

    endpoint: str | None
    api_key: str | None

    def _url(self) -> str | None:
        return f"{self.endpoint.rstrip('/')}{API_PATH}" if self.endpoint else None

    def client(self) -> SandboxClient:
        from hutch.client import SandboxClient

        return SandboxClient(api_endpoint=self._url(), api_key=self.api_key)

    def async_client(self) -> AsyncSandboxClient:
        from hutch.client import AsyncSandboxClient

        return AsyncSandboxClient(api_endpoint=self._url(), api_key=self.api_key)


def connection_callback(
    ctx: typer.Context,
    endpoint: str | None = typer.Option(
        None,
        "--endpoint",
        envvar="HUTCH_ENDPOINT",
        help="Server URL, e.g. http://127.0.0.1:8080 [env: HUTCH_ENDPOINT]",
        show_envvar=False,
    ),
    api_key: str | None = typer.Option(
        None,
        "--api-key",
        envvar="HUTCH_API_KEY",
        help="API key [env: HUTCH_API_KEY]",
        show_envvar=False,
    ),
) -> None:
    """Stores the connection options for the subcommand (they go before it)."""
    ctx.obj = Connection(endpoint or None, api_key or None)


def conn(ctx: typer.Context) -> Connection:
    obj = ctx.find_object(Connection)
    return obj if obj is not None else Connection(None, None)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` as one line on stderr and exit with ``code``."""
    one_line = " ".join(str(message).split())
    typer.echo(f"error: {one_line}", err=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn the SDK's errors (which carry the server's envelope message), local file errors and
    bad values into a one-line message and exit 1: never a traceback."""
    from hutch.client import SandboxClientError

    try:
        yield
    except SandboxClientError as exc:
        fail(str(exc) or type(exc).__name__)
    except ImportError as exc:
        fail(f"{exc}; install the CLI's dependencies: pip install 'hutch[cli]'")
    except (OSError, ValueError) as exc:
        fail(str(exc) or type(exc).__name__)
    except KeyboardInterrupt:
        raise typer.Exit(130) from None  # Ctrl-C while waiting on the server: no traceback


def require_ready(sb: Sandbox | AsyncSandbox) -> None:
    """Fail with what to do when ``sb`` cannot run commands or serve files."""
    if sb.status != "ready":
        fail(
            f"sandbox {sb.name} is {sb.status}; "
            + (
                f"start it with: hutch sandbox start {sb.name}"
                if sb.status == "stopped"
                else "wait until it is ready (hutch sandbox ls)"
            )
        )


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


# -- parsers ----------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGTP]i?|[kmgtp]|B?)\s*$")
_UNITS = {"": 1, "B": 1, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4, "P": 1000**5}


def parse_size(value: str, option: str) -> int:
    """Bytes of ``512Mi``, ``2Gi``, ``1G`` (decimal) or a plain number of bytes."""
    m = _SIZE.match(value)
    if not m:
        raise typer.BadParameter(f"{option} {value!r}: use bytes or a size like 512Mi, 2Gi")
    number, unit = float(m.group(1)), m.group(2)
    binary = unit.endswith("i")
    factor = 1024 ** ("KMGTP".index(unit[0]) + 1) if binary else _UNITS[unit.upper()]
    size = int(number * factor)
    if size < 1:
        raise typer.BadParameter(f"{option} {value!r}: must be at least 1 byte")
    return size


_DURATION = re.compile(r"^\s*(\d+)\s*([smhd]?)\s*$")


def parse_duration(value: str, option: str) -> int:
    """Seconds of ``90``, ``90s``, ``10m``, ``2h`` or ``1d``."""
    m = _DURATION.match(value)
    if not m:
        raise typer.BadParameter(f"{option} {value!r}: use seconds or 30s, 10m, 2h, 1d")
    return int(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def parse_pairs(values: list[str], option: str) -> dict[str, str]:
    """``KEY=VALUE`` items (repeatable option) as a dict; the value may contain ``=``."""
    pairs: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{option} {item!r}: use KEY=VALUE")
        pairs[key] = value
    return pairs


# -- display ----------------------------------------------------------------------------------


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _span(seconds: float) -> str:
    seconds = abs(int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ago(value: str | None, now: datetime | None = None) -> str:
    """``5m ago`` for an ISO time in the past (``-`` when unknown)."""
    t = _parse_time(value)
    if t is None:
        return "-"
    return f"{_span(((now or datetime.now(UTC)) - t).total_seconds())} ago"


def until(value: str | None, now: datetime | None = None) -> str | None:
    """``in 9m`` for an ISO time in the future, ``now`` when it has passed, None when unknown."""
    t = _parse_time(value)
    if t is None:
        return None
    left = (t - (now or datetime.now(UTC))).total_seconds()
    return f"in {_span(left)}" if left > 0 else "now"


def human_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")


#: A table column: its header and the cell (rich markup) of one item.
Column: TypeAlias = tuple[str, Callable[[T], str]]


def table(columns: list[Column[T]], items: list[T]) -> Table:
    """The rich table of ``items``, one row each."""
    from rich.table import Table

    t = Table(box=None, header_style="bold", pad_edge=False)
    for header, _ in columns:
        t.add_column(header, overflow="fold")
    for item in items:
        t.add_row(*(cell(item) for _, cell in columns))
    return t


def status_style(status: str | None) -> str:
    colour = {"ready": "green", "failed": "red", "provisioning": "yellow", "stopped": "dim"}
    s = status or "-"
    return f"[{colour[s]}]{s}[/]" if s in colour else s


def mapping_of(value: Mapping[str, str] | None) -> dict[str, str]:
    return dict(value or {})
