"""Who a command runs as: ``docker run -u`` strings resolved against a sandbox's own user files.

``user`` is ``name``, ``uid``, ``name:group`` or ``uid:gid`` (group a name or a number), with the
semantics of Docker and runc (``libcontainer/user.GetExecUser``):

* A number is always a uid, even if some user is *named* like it. With an ``/etc/passwd`` entry
  for that uid, the entry's primary gid and supplementary groups apply; without one, the command
  runs as that uid with gid 0 and no supplementary groups (Docker's choice, kept so that images
  behave as they do under Docker).
* A name must have an ``/etc/passwd`` entry (the first one wins); an unknown name is an error.
* Supplementary groups are every ``/etc/group`` entry listing the user's name, only in the
  implicit form: with an explicit ``:group`` the command gets that gid and no supplementary
  groups (as with ``docker run -u user:group``).
* ``HOME`` is not touched: the caller's environment stands as given (the server sets
  ``HOME=/home/user`` for every command, whoever runs it).

The sandbox's files are hostile input: they are read through its root with ``openat2``
(:mod:`hutch.runtime.runc._fs`), must be regular files of at most :data:`MAX_FILE` bytes, and lines
that do not parse are skipped (as the C library does). Ids are bounded to ``0..MAX_ID``, the range
the sandbox's user namespace maps; at most :data:`MAX_GROUPS` supplementary groups.

Everything but :func:`read_file` and :func:`resolve_in` is pure.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from hutch.runtime._interface import FileError, FileNotFound
from hutch.runtime.runc import _fs

#: Highest uid or gid: the sandbox's user namespace maps exactly 0..65535.
MAX_ID = 65535
#: Supplementary groups a command may have (the SPAWN message of hutch-init carries this many).
MAX_GROUPS = 64
#: Largest ``/etc/passwd`` or ``/etc/group`` read from a sandbox, in bytes.
MAX_FILE = 1 << 20
#: Longest user or group part of a user string.
MAX_NAME = 256

PASSWD = "/etc/passwd"
GROUP = "/etc/group"

# ASCII digits only: int() would also take "+1", " 1", "1_0" and other scripts' digits.
_NUMBER = re.compile(r"[0-9]{1,10}")


class UserError(ValueError):
    """A user string that cannot be resolved in this sandbox; ``str()`` is meant for users."""


@dataclass(frozen=True)
class Credentials:
    """What a command runs as: uid, primary gid and supplementary gids (each 0..MAX_ID)."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()


ROOT = Credentials(0, 0)


@dataclass(frozen=True)
class PasswdEntry:
    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class GroupEntry:
    name: str
    gid: int
    members: tuple[str, ...]


def _number(text: str) -> int | None:
    return int(text) if _NUMBER.fullmatch(text) else None


def _lines(data: bytes) -> list[list[str]]:
    """Colon-separated fields of each line that is neither blank nor a comment."""
    out = []
    for raw in data.decode("utf-8", errors="replace").split("\n"):
        line = raw.strip()
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def parse_passwd(data: bytes) -> list[PasswdEntry]:
    """Entries of an ``/etc/passwd`` (``name:password:uid:gid:gecos:home:shell``), in order.

    A line without a name or without decimal uid and gid is skipped, as NIS ``+``/``-`` lines.
    """
    entries = []
    for fields in _lines(data):
        if len(fields) < 4 or not fields[0]:
            continue
        uid, gid = _number(fields[2]), _number(fields[3])
        if uid is not None and gid is not None:
            entries.append(PasswdEntry(fields[0], uid, gid))
    return entries


def parse_group(data: bytes) -> list[GroupEntry]:
    """Entries of an ``/etc/group`` (``name:password:gid:member,member``), in order."""
    entries = []
    for fields in _lines(data):
        if len(fields) < 3 or not fields[0]:
            continue
        gid = _number(fields[2])
        if gid is None:
            continue
        members = fields[3].split(",") if len(fields) > 3 else []
        entries.append(GroupEntry(fields[0], gid, tuple(m.strip() for m in members if m.strip())))
    return entries


def parse_spec(spec: str) -> tuple[str, str | None]:
    """Split ``user[:group]``; raises :class:`UserError` for an empty or malformed part."""
    user, sep, group = spec.partition(":")
    parts = [user, group] if sep else [user]
    for part in parts:
        if not part or ":" in part or len(part) > MAX_NAME or any(c in part for c in "\0\n"):
            raise UserError(
                f"Invalid user {spec!r}: use a name, a uid, name:group or uid:gid "
                "(as docker run -u)"
            )
    return user, (group if sep else None)


def _in_range(value: int, what: str) -> int:
    if not 0 <= value <= MAX_ID:
        raise UserError(f"{what} ({value}) is out of range: a sandbox has ids 0 to {MAX_ID} only")
    return value


#: Reads a sandbox file by absolute path: its bytes, or None if it does not exist.
Reader = Callable[[str], bytes | None]


def resolve(spec: str, read: Reader) -> Credentials:
    """The credentials ``spec`` names, given the sandbox's files (see the module docstring).

    ``read`` is only asked for the files the answer depends on. Raises :class:`UserError`.
    """
    user, group = parse_spec(spec)
    passwd_data = read(PASSWD)
    passwd = parse_passwd(passwd_data) if passwd_data is not None else []
    uid_arg = _number(user)
    if uid_arg is not None:
        entry = next((e for e in passwd if e.uid == uid_arg), None)
    else:
        entry = next((e for e in passwd if e.name == user), None)
        if entry is None:
            raise UserError(
                f"User {user!r} does not exist in the sandbox: its {PASSWD} has no such user; "
                "add the user to the image or run as a numeric uid"
            )
    if entry is not None:
        uid, gid = _in_range(entry.uid, f"uid of user {entry.name!r}"), entry.gid
    else:  # a number without an entry: gid 0, as Docker
        assert uid_arg is not None
        uid, gid = _in_range(uid_arg, "uid"), 0
    if group is not None:
        gid_arg = _number(group)
        if gid_arg is not None:
            return Credentials(uid, _in_range(gid_arg, "gid"))
        group_data = read(GROUP)
        groups = parse_group(group_data) if group_data is not None else []
        match = next((g for g in groups if g.name == group), None)
        if match is None:
            raise UserError(
                f"Group {group!r} does not exist in the sandbox: its {GROUP} has no such "
                "group; add the group to the image or use a numeric gid"
            )
        return Credentials(uid, _in_range(match.gid, f"gid of group {group!r}"))
    if entry is None:
        return Credentials(uid, gid)
    gid = _in_range(gid, f"primary gid of user {entry.name!r}")
    group_data = read(GROUP)
    extra: dict[int, None] = {}  # ordered and deduplicated in linear time (hostile file)
    for g in parse_group(group_data) if group_data is not None else []:
        if entry.name in g.members:
            extra[_in_range(g.gid, f"gid of group {g.name!r}")] = None
            if len(extra) > MAX_GROUPS:
                raise UserError(
                    f"User {entry.name!r} is in more than {MAX_GROUPS} groups in the sandbox's "
                    f"{GROUP}; commands can have at most {MAX_GROUPS} supplementary groups"
                )
    return Credentials(uid, gid, tuple(extra))


def read_file(root_fd: int, path: str) -> bytes | None:
    """A sandbox's file read through its root (``openat2 RESOLVE_IN_ROOT``), None if missing.

    Raises :class:`UserError` if it is not a regular file, is larger than :data:`MAX_FILE`, or
    cannot be read.
    """
    try:
        fd, size = _fs.open_for_read(root_fd, path)
    except FileNotFound:
        return None
    except FileError as exc:
        raise UserError(f"Cannot read the sandbox's {path}: {exc}") from exc
    try:
        if size > MAX_FILE:
            raise UserError(f"The sandbox's {path} is larger than {MAX_FILE} bytes")
        chunks, total = [], 0
        while True:  # bounded even if the file grows while we read it
            chunk = os.read(fd, MAX_FILE + 1 - total)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > MAX_FILE:
                raise UserError(f"The sandbox's {path} is larger than {MAX_FILE} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise UserError(f"Cannot read the sandbox's {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def resolve_in(root_fd: int, spec: str) -> Credentials:
    """:func:`resolve` against the files of the sandbox whose root is ``root_fd``."""
    return resolve(spec, lambda path: read_file(root_fd, path))
