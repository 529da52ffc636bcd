"""The interception CA in a sandbox's trust stores, for sandboxes with egress header rules.

HTTPS to a header rule's host is terminated by the egress proxy with a certificate of the
server's CA (:mod:`._egress_tls`); a sandbox with such rules gets that CA in the bundles its TLS
clients read, so they verify it. Sandboxes without header rules never get it.
"""

from __future__ import annotations

import os

from hutch.runtime._interface import FileError, FileNotFound, InvalidPath
from hutch.runtime.runc import _fs

#: The bundles OpenSSL reads by default (Python, curl, wget, Go, Ruby, ...) on Debian and Ubuntu
#: (``/usr/lib/ssl/cert.pem`` is a link to the first when ca-certificates is installed, and the
#: only one read when it is not), Alpine and RHEL; and Debian's drop-in directory, so that an
#: ``update-ca-certificates`` in the sandbox keeps it. Each is appended to (made if missing)
#: unless it holds the certificate already.
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
CA_BUNDLES = (CA_BUNDLE, "/usr/lib/ssl/cert.pem", "/etc/ssl/cert.pem",
              "/etc/pki/tls/certs/ca-bundle.crt")  # fmt: skip
CA_DROP_IN = "/usr/local/share/ca-certificates/hutch-egress.crt"
#: A sandbox's bundle larger than this is left alone (the drop-in is still written).
MAX_BUNDLE = 8 << 20


class TrustError(Exception):
    """The CA could not be added to the sandbox's trust stores."""


def install_ca(root_fd: int, pem: bytes, uid: int, gid: int) -> None:
    """Append ``pem`` to each bundle of the sandbox whose root is ``root_fd`` unless it is
    there (blocking). Paths resolve inside that root (openat2 RESOLVE_IN_ROOT): the sandbox's
    links cannot lead out. Files made belong to ``uid``/``gid`` (the sandbox's root).

    Raises TrustError naming the bundle that could not be written.
    """
    for path, append in ((CA_DROP_IN, False), *((b, True) for b in CA_BUNDLES)):
        try:
            _add(root_fd, path, append, pem, uid, gid)
        except (OSError, FileError) as exc:
            raise TrustError(
                f"the egress CA could not be added to the sandbox's {path} ({exc}); HTTPS to "
                "the header rules' hosts will not verify"
            ) from None


def _add(root_fd: int, path: str, append: bool, pem: bytes, uid: int, gid: int) -> None:
    current = b""
    if append:
        try:
            fd, size = _fs.open_for_read(root_fd, path)
        except (FileNotFound, InvalidPath):
            fd, size = -1, 0
        if fd >= 0:
            try:
                if size > MAX_BUNDLE:
                    return
                current = os.read(fd, MAX_BUNDLE + 1)
            finally:
                os.close(fd)
        if pem in current:
            return
        if current and not current.endswith(b"\n"):
            current += b"\n"
    fd = _fs.open_for_write(root_fd, path, uid, gid)
    try:
        _fs.write_all(fd, [current, pem])
    finally:
        os.close(fd)
