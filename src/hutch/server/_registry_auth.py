"""Per-template registry credentials (the hutch extension ``registry_username`` and
``registry_password`` on template create, named like the snapshot build fields of spec §8).

One JSON file per template id, mode 0600, in a 0700 directory of the data dir: re-pulling the
image later (after ``hutch image gc`` or on a new server) needs them again. They are never
returned by the API.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from hutch.runtime.images import Credentials

__all__ = ["TemplateCredentials"]

_ID_RE = re.compile(r"^[0-9a-f]{1,64}$")


class TemplateCredentials:
    def __init__(self, root: Path) -> None:
        self._root = root

    def _path(self, template_id: str) -> Path:
        if not _ID_RE.match(template_id):
            raise ValueError(f"bad template id {template_id!r}")
        return self._root / f"{template_id}.json"

    def put(self, template_id: str, credentials: Credentials) -> None:
        self._root.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._root, 0o700)
        path = self._path(template_id)
        tmp = path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        with open(fd, "w") as out:
            json.dump({"username": credentials.username, "password": credentials.password}, out)
        os.replace(tmp, path)

    def get(self, template_id: str | None) -> Credentials | None:
        if template_id is None:
            return None
        try:
            doc = json.loads(self._path(template_id).read_bytes())
            return Credentials(str(doc["username"]), str(doc["password"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def delete(self, template_id: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._path(template_id).unlink(missing_ok=True)
