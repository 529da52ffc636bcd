"""The ``hutch`` entry point: the client commands (``sandbox``, ``template``, ``snapshot``) run
without importing the server, so ``pip install 'hutch[cli]'`` is enough for them; everything
else goes to :mod:`hutch.cli`, which needs the ``server`` extra."""

from __future__ import annotations

import sys

#: Command groups served by :mod:`hutch._cli_sandbox` alone.
CLIENT_GROUPS = frozenset({"sandbox", "template", "snapshot"})


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in CLIENT_GROUPS:
        from hutch._cli_sandbox import client_app

        client_app(prog_name="hutch")
        return
    try:
        from hutch.cli import main as server_main
    except ImportError as exc:
        sys.exit(
            f"error: {exc}; hutch serve and the admin commands need the server extra "
            "(pip install 'hutch[server]'); hutch sandbox|template|snapshot work without it"
        )
    server_main()
