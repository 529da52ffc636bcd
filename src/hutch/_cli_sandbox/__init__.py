"""``hutch sandbox|template|snapshot``: drive a hutch server's sandboxes over its API.

A client only: it talks to ``HUTCH_ENDPOINT`` with ``HUTCH_API_KEY`` (or ``--endpoint`` and
``--api-key``) through the SDK, and imports no server, runtime or store code.
"""

import typer

from hutch._cli_sandbox import _cp, _exec, _shell  # noqa: F401  (they register commands)
from hutch._cli_sandbox._control import sandbox_app, snapshot_app, template_app

#: The client groups alone, for ``hutch`` without the server's dependencies (see _cli_main).
client_app = typer.Typer(help="hutch: a self-hosted sandbox server.", add_completion=False)
client_app.add_typer(sandbox_app, name="sandbox")
client_app.add_typer(template_app, name="template")
client_app.add_typer(snapshot_app, name="snapshot")

__all__ = ["client_app", "sandbox_app", "snapshot_app", "template_app"]
