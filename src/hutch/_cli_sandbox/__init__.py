"""``hutch sandbox|template|snapshot``: drive a hutch server's sandboxes over its API.

A client only: it talks to ``HUTCH_ENDPOINT`` with ``HUTCH_API_KEY`` (or ``--endpoint`` and
``--api-key``) through the SDK, and imports no server, runtime or store code.
"""

from hutch._cli_sandbox import _cp, _exec, _shell  # noqa: F401  (they register commands)
from hutch._cli_sandbox._control import sandbox_app, snapshot_app, template_app

__all__ = ["sandbox_app", "snapshot_app", "template_app"]
