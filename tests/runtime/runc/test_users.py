"""Commands run as a chosen user: resolution against the sandbox's files, hutch-init, runc exec.

The first part checks the pure resolution (:mod:`hutch.runtime.runc._users`) with examples and
hypothesis; the second the credentials in hutch-init's SPAWN message, against the real binary run
as an ordinary process; the third real sandboxes, through hutch-init and through the ``runc exec``
fallback of adopted sandboxes.
"""

from __future__ import annotations

import asyncio
import errno
import io
import os
import shutil
import socket
import struct
import subprocess
import tarfile
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hutch.runtime._interface import ExecSpec, SandboxSpec, SpawnError
from hutch.runtime.images import Image, ImageStore
from hutch.runtime.runc import RuncRuntime, _spawner, _users
from hutch.runtime.runc._users import Credentials, UserError
from tests.conftest import TIME_SCALE

#: The async tests share the session's event loop (the module's sandbox fixture lives on it).
on_session_loop = pytest.mark.asyncio(loop_scope="session")

QUICK = 10 * TIME_SCALE

PASSWD = b"""root:x:0:0:root:/root:/bin/sh
# a comment, then a blank line and lines that do not parse

+nis
broken:x:notanumber:0::/:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
big:x:70000:70000::/:/bin/sh
"""
GROUP = b"""root:x:0:
app:x:1000:
extra:x:2000:app
other:x:3000: root , app
"""


def reader(files: dict[str, bytes]) -> _users.Reader:
    return files.get


# -- resolution ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("app", Credentials(1000, 1000, (2000, 3000))),
        ("1000", Credentials(1000, 1000, (2000, 3000))),  # a number finds its entry's groups
        ("1000:2000", Credentials(1000, 2000)),  # an explicit group: no supplementary ones
        ("app:extra", Credentials(1000, 2000)),
        ("app:0", Credentials(1000, 0)),
        ("0", Credentials(0, 0, (3000,))),
        ("root", Credentials(0, 0, (3000,))),
        ("4242", Credentials(4242, 0)),  # no entry: gid 0, as Docker
        ("4242:77", Credentials(4242, 77)),
        ("65535", Credentials(65535, 0)),
    ],
)
def test_resolution_follows_docker(spec: str, expected: Credentials) -> None:
    """Names, numbers and user:group resolve as `docker run -u` does."""
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    assert _users.resolve(spec, reader(files)) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("bob", "User 'bob' does not exist in the sandbox: its /etc/passwd has no such user"),
        ("app:nogroup", "Group 'nogroup' does not exist in the sandbox: its /etc/group"),
        ("65536", r"uid \(65536\) is out of range: a sandbox has ids 0 to 65535 only"),
        ("big", r"uid of user 'big' \(70000\) is out of range"),
        ("1000:65536", r"gid \(65536\) is out of range"),
        ("", "Invalid user"),
        ("app:", "Invalid user"),
        (":app", "Invalid user"),
        ("a:b:c", "Invalid user"),
        ("99999999999", "does not exist"),  # too many digits to be a uid: a (missing) name
    ],
)
def test_unresolvable_users_say_why(spec: str, message: str) -> None:
    """Unknown names and groups, out-of-range ids and malformed strings raise UserError."""
    files = {"/etc/passwd": PASSWD, "/etc/group": GROUP}
    with pytest.raises(UserError, match=message):
        _users.resolve(spec, reader(files))


def test_missing_files() -> None:
    """Without /etc/passwd numbers still work and names do not; /etc/group is only read when
    needed."""
    asked: list[str] = []

    def read(path: str) -> bytes | None:
        asked.append(path)
        return None

    assert _users.resolve("1000", read) == Credentials(1000, 0)
    assert _users.resolve("1000:5", read) == Credentials(1000, 5)
    assert asked == ["/etc/passwd", "/etc/passwd"]
    with pytest.raises(UserError, match="/etc/passwd has no such user"):
        _users.resolve("app", read)
    assert _users.resolve("app", reader({"/etc/passwd": PASSWD})) == Credentials(1000, 1000)


def test_too_many_groups() -> None:
    """More than MAX_GROUPS supplementary groups is an error, not a silent truncation."""
    many = b"".join(b"g%d:x:%d:app\n" % (i, 5000 + i) for i in range(_users.MAX_GROUPS + 1))
    files = {"/etc/passwd": PASSWD, "/etc/group": many}
    with pytest.raises(UserError, match="more than 64 groups"):
        _users.resolve("app", reader(files))
    files["/etc/group"] = b"".join(many.splitlines(keepends=True)[: _users.MAX_GROUPS])
    assert len(_users.resolve("app", reader(files)).groups) == _users.MAX_GROUPS


names = st.from_regex(r"[a-z_][a-z0-9_-]{0,11}", fullmatch=True)
ids = st.integers(0, 2**32 - 1)
passwd_entries = st.lists(st.builds(_users.PasswdEntry, names, ids, ids), max_size=8)
group_entries = st.lists(
    st.builds(_users.GroupEntry, names, ids, st.lists(names, max_size=4).map(tuple)), max_size=8
)


def render_passwd(entries: list[_users.PasswdEntry]) -> bytes:
    return "".join(
        f"{e.name}:x:{e.uid}:{e.gid}::/home/{e.name}:/bin/sh\n" for e in entries
    ).encode()


def render_group(entries: list[_users.GroupEntry]) -> bytes:
    return "".join(f"{g.name}:x:{g.gid}:{','.join(g.members)}\n" for g in entries).encode()


@given(passwd_entries, group_entries)
def test_files_parse_back(
    passwd: list[_users.PasswdEntry], groups: list[_users.GroupEntry]
) -> None:
    """Well-formed files parse to exactly their entries, in order."""
    assert _users.parse_passwd(render_passwd(passwd)) == passwd
    assert _users.parse_group(render_group(groups)) == groups


@given(passwd_entries, group_entries, st.data())
def test_a_name_resolves_to_its_first_entry_and_its_groups(
    passwd: list[_users.PasswdEntry], groups: list[_users.GroupEntry], data: st.DataObject
) -> None:
    """A known name gets its first entry's ids and the gids of every group listing it."""
    name = data.draw(st.sampled_from([e.name for e in passwd]) if passwd else names)
    files = {"/etc/passwd": render_passwd(passwd), "/etc/group": render_group(groups)}
    entry = next((e for e in passwd if e.name == name), None)
    if entry is None:
        with pytest.raises(UserError, match="no such user"):
            _users.resolve(name, reader(files))
        return
    member_of = list(dict.fromkeys(g.gid for g in groups if name in g.members))
    in_range = all(i <= _users.MAX_ID for i in (entry.uid, entry.gid, *member_of))
    if not in_range:
        with pytest.raises(UserError, match="out of range"):
            _users.resolve(name, reader(files))
        return
    assert _users.resolve(name, reader(files)) == Credentials(
        entry.uid, entry.gid, tuple(member_of)
    )


@given(passwd_entries, ids, st.one_of(st.none(), ids))
def test_numbers_are_ids(passwd: list[_users.PasswdEntry], uid: int, gid: int | None) -> None:
    """A number is a uid (and a group number a gid), bounded to 0..65535."""
    files = {"/etc/passwd": render_passwd(passwd), "/etc/group": b""}
    spec = str(uid) if gid is None else f"{uid}:{gid}"
    entry = next((e for e in passwd if e.uid == uid), None)
    primary = gid if gid is not None else (entry.gid if entry else 0)
    if uid > _users.MAX_ID or primary > _users.MAX_ID:
        with pytest.raises(UserError, match="out of range"):
            _users.resolve(spec, reader(files))
        return
    assert _users.resolve(spec, reader(files)) == Credentials(uid, primary)


@settings(max_examples=300)
@given(st.text(max_size=40), st.binary(max_size=300), st.binary(max_size=300))
def test_hostile_files_never_escape_the_bounds(spec: str, passwd: bytes, group: bytes) -> None:
    """Whatever the user string and the files hold: valid credentials or UserError, nothing else."""
    try:
        creds = _users.resolve(spec, reader({"/etc/passwd": passwd, "/etc/group": group}))
    except UserError:
        return
    assert all(0 <= i <= _users.MAX_ID for i in (creds.uid, creds.gid, *creds.groups))
    assert len(creds.groups) <= _users.MAX_GROUPS


def test_files_are_read_inside_the_root(tmp_path: Path) -> None:
    """A symlinked /etc/passwd resolves in the sandbox's root; directories and oversized files
    are refused; a missing file is None."""
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "inside").write_bytes(b"app:x:7:7::/:/bin/sh\n")
    (root / "etc" / "passwd").symlink_to("/../../inside")
    (root / "etc" / "group").mkdir()
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY)
    try:
        assert _users.resolve_in(fd, "app:9") == Credentials(7, 9)
        with pytest.raises(UserError, match="directory"):
            _users.read_file(fd, "/etc/group")
        assert _users.read_file(fd, "/etc/shadow") is None
        (root / "inside").write_bytes(b"#" * (_users.MAX_FILE + 1))
        with pytest.raises(UserError, match="larger than"):
            _users.read_file(fd, "/etc/passwd")
    finally:
        os.close(fd)


# -- hutch-init's SPAWN message ------------------------------------------------------------------


@pytest.fixture(scope="module")
def init_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    built = _spawner.build_init(tmp_path_factory.mktemp("init-bin"))
    assert built is not None, "hutch-init must build (gcc and libc6-dev are installed by make)"
    return built


@pytest.fixture
def init(init_binary: Path) -> Iterator[tuple[subprocess.Popen[bytes], socket.socket]]:
    """A running hutch-init (not in a container) and the server's end of its control socket."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen([str(init_binary)], stdin=theirs)
    theirs.close()
    try:
        yield proc, ours
    finally:
        proc.kill()
        proc.wait()
        ours.close()


async def spawn_output(
    spawner: _spawner.Spawner, argv: list[str], user: Credentials | None
) -> tuple[bytes, int]:
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        spawned = await spawner.spawn(
            argv, {"PATH": "/usr/bin:/bin"}, "/", (null, out_w, out_w), user=user
        )
    finally:
        os.close(out_w)
        os.close(null)
    exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    spawner.release(spawned.id, exited.set_result)
    with os.fdopen(out_r, "rb") as f:
        out = await asyncio.to_thread(f.read)
    return out, _spawner.exit_code(await asyncio.wait_for(exited, QUICK))


@on_session_loop
@pytest.mark.root
async def test_init_takes_the_credentials_it_is_sent(
    init: tuple[subprocess.Popen[bytes], socket.socket],
) -> None:
    """The child runs with exactly the uid, gid and groups of the SPAWN; without, as root."""
    spawner = _spawner.Spawner(init[1])
    try:
        script = ["sh", "-c", "id -u; id -g; id -G; grep CapEff /proc/self/status"]
        out, code = await spawn_output(spawner, script, Credentials(1000, 2000, (3000, 3001)))
        assert code == 0, out
        assert out.splitlines()[:3] == [b"1000", b"2000", b"2000 3000 3001"]
        assert out.splitlines()[3].split() == [b"CapEff:", b"0000000000000000"]
        out, code = await spawn_output(spawner, ["sh", "-c", "id -u; id -G"], None)
        assert (out, code) == (b"0\n0\n", 0)
    finally:
        spawner.close()


@pytest.fixture
def unprivileged_init(init_binary: Path) -> Iterator[socket.socket]:
    """A hutch-init running as nobody (so it may not change ids); the server's end of its socket."""
    where = Path(tempfile.mkdtemp(prefix="hutch-init-"))  # /tmp/pytest-of-root is 0700
    try:
        where.chmod(0o755)
        binary = where / "hutch-init"
        shutil.copy2(init_binary, binary)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        proc = subprocess.Popen(
            [str(binary)], stdin=theirs, user=65534, group=65534, extra_groups=[]
        )
        theirs.close()
        try:
            yield ours
        finally:
            proc.kill()
            proc.wait()
            ours.close()
    finally:
        shutil.rmtree(where)


@on_session_loop
@pytest.mark.root
async def test_an_init_that_cannot_change_ids_never_runs_the_command(
    unprivileged_init: socket.socket,
) -> None:
    """If setgroups/setresgid/setresuid fail, the child says which on its stderr and exits 255
    without exec."""
    spawner = _spawner.Spawner(unprivileged_init)
    try:
        out, code = await spawn_output(spawner, ["id", "-u"], Credentials(1000, 1000))
        assert (
            out == b"hutch: cannot run as uid 1000, gid 1000: setgroups: Operation not permitted\n"
        )
        assert code == 255
    finally:
        spawner.close()


def test_spawner_refuses_ids_it_cannot_send() -> None:
    """Ids beyond 0..65535 or more than 64 groups never reach the init."""
    for bad in (Credentials(65536, 0), Credentials(0, -1), Credentials(0, 0, (0,) * 65)):
        with pytest.raises(_spawner.SpawnerError, match="ids must be"):
            _spawner._spawn_header(1, 1, 0, False, 24, 80, bad)


@on_session_loop
@pytest.mark.root
async def test_malformed_credentials_are_refused_and_nothing_runs(
    init: tuple[subprocess.Popen[bytes], socket.socket], tmp_path: Path
) -> None:
    """SPAWNs whose length, flags, group count or ids are wrong get an errno back, no child."""
    proc, sock = init
    marker = tmp_path / "ran"
    header = struct.Struct("=IIQIIHHI")

    def spawn(ident: int, flags: int, ngroups: int, tail: bytes) -> bytes:
        return header.pack(1, flags, ident, 2, 0, 0, 0, ngroups) + tail

    def user(uid: int, gid: int, *groups: int) -> bytes:
        return struct.pack(f"=II{len(groups)}I", uid, gid, *groups)

    cases = {
        1: (spawn(1, 2, 0, b""), "EBADMSG"),  # FLAG_USER without uid and gid
        2: (spawn(2, 2, 2, user(1, 1, 5)), "EBADMSG"),  # says two groups, carries one
        3: (spawn(3, 2, 65, user(1, 1, *range(65))), "EBADMSG"),  # too many groups
        4: (spawn(4, 0, 1, b""), "EBADMSG"),  # groups without FLAG_USER
        5: (spawn(5, 0, 0, user(1, 1)), "EBADMSG"),  # credentials without FLAG_USER
        6: (spawn(6, 8, 0, b""), "EINVAL"),  # unknown flag
        7: (spawn(7, 2, 0, user(65536, 1)), "EINVAL"),
        8: (spawn(8, 2, 0, user(1, 0xFFFFFFFF)), "EINVAL"),  # -1 would mean "unchanged"
        9: (spawn(9, 2, 1, user(1, 1, 0xFFFFFFFF)), "EINVAL"),
        10: (spawn(10, 2, 0, user(0xFFFFFFFF, 1)), "EINVAL"),
        11: (header.pack(1, 2, 11, 2, 0, 0, 0, 0)[:20], "EBADMSG"),  # shorter than the header
        12: (spawn(12, 2, 1000, user(1, 1, *range(1000))), "EBADMSG"),  # longer than any SPAWN
    }
    payload = os.memfd_create("spawn", os.MFD_CLOEXEC)
    os.write(payload, b"/\0touch\0" + str(marker).encode() + b"\0")
    null = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
    try:
        for data, _ in cases.values():
            socket.send_fds(sock, [data], [payload, null, null, null])
    finally:
        os.close(payload)
        os.close(null)
    sock.settimeout(QUICK)
    answers = {}
    while len(answers) < len(cases):
        data, fds, _, _ = socket.recv_fds(sock, 64, 4)
        for fd in fds:
            os.close(fd)
        kind, err, ident = struct.unpack("=IiQ", data)
        assert kind == 4
        answers[ident] = err
    assert answers == {i: getattr(errno, name) for i, (_, name) in cases.items()}
    assert proc.poll() is None
    spawner = _spawner.Spawner(sock)
    try:
        out, code = await spawn_output(spawner, ["sh", "-c", "id -u"], Credentials(5, 5))
        assert (out, code) == (b"5\n", 0)
    finally:
        spawner.close()
    assert not marker.exists()


# -- in sandboxes -------------------------------------------------------------------------------

SANDBOX_PASSWD = b"""root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
big:x:70000:70000::/:/bin/sh
"""
SANDBOX_GROUP = b"""root:x:0:
app:x:1000:
extra:x:2000:app
"""


@pytest.fixture(scope="module")
def users_image(tmp_path_factory: pytest.TempPathFactory, busybox_tar: Path) -> Image:
    """busybox with an /etc/passwd and /etc/group that know user app and group extra."""
    work = tmp_path_factory.mktemp("users-image")
    rootfs = work / "rootfs.tar"
    replaced = {"./etc/passwd": SANDBOX_PASSWD, "./etc/group": SANDBOX_GROUP}
    with tarfile.open(busybox_tar) as src, tarfile.open(rootfs, "w") as dst:
        for member in src.getmembers():
            if member.name in replaced:
                continue
            dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        for name, content in replaced.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            dst.addfile(info, io.BytesIO(content))
    return ImageStore(work / "store").import_path("local/busybox-users", rootfs)


@pytest.fixture(scope="module")
async def runtimes(
    tmp_path_factory: pytest.TempPathFactory, users_image: Image
) -> AsyncIterator[tuple[dict[str, RuncRuntime], str]]:
    """One sandbox, reached by the runtime that made it (hutch-init) and by a second runtime on
    the same data dir (an adopted sandbox whose init holds no control socket: runc exec)."""
    data = tmp_path_factory.mktemp("users") / "data"
    rt = RuncRuntime(data)
    sandbox_id = uuid.uuid4().hex
    await rt.create(SandboxSpec(id=sandbox_id, image=users_image, hostname="users-test"))
    (data / "sandboxes" / sandbox_id / "init.ctl").unlink()
    adopted = RuncRuntime(data)
    try:
        yield {"init": rt, "runc-exec": adopted}, sandbox_id
    finally:
        await adopted.aclose()
        await rt.delete(sandbox_id)
        await rt.aclose()


PATHS = ["init", "runc-exec"]


async def run(rt: RuncRuntime, sid: str, script: str, user: str | None) -> tuple[bytes, int]:
    """stdout and stderr together, and the exit code."""
    proc = await rt.exec(sid, ExecSpec(argv=["sh", "-c", f"exec 2>&1; {script}"], user=user))
    try:
        assert proc.stdin is not None
        proc.stdin.close()
        out, code = await asyncio.wait_for(asyncio.gather(proc.stdout.read(), proc.wait()), QUICK)
    finally:
        await proc.close()
    return out, code


@on_session_loop
@pytest.mark.root
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ("app", b"1000\n1000\n1000 2000\n"),
        ("1000", b"1000\n1000\n1000 2000\n"),
        ("1000:2000", b"1000\n2000\n2000\n"),
        ("app:extra", b"1000\n2000\n2000\n"),
        ("0", b"0\n0\n0\n"),
        (None, b"0\n0\n0\n"),
        ("4242", b"4242\n0\n0\n"),
    ],
)
async def test_commands_run_as_the_user(
    runtimes: tuple[dict[str, RuncRuntime], str], path: str, user: str | None, expected: bytes
) -> None:
    """id -u, id -g and id -G show the resolved user, group and supplementary groups."""
    rts, sid = runtimes
    assert await run(rts[path], sid, "id -u; id -g; id -G", user) == (expected, 0)


@on_session_loop
@pytest.mark.root
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("user", "message"),
    [
        ("nobody-here", "User 'nobody-here' does not exist in the sandbox: its /etc/passwd"),
        ("app:nogroup", "Group 'nogroup' does not exist"),
        ("65536", r"uid \(65536\) is out of range"),
        ("big", "out of range"),
    ],
)
async def test_unresolvable_users_are_spawn_errors(
    runtimes: tuple[dict[str, RuncRuntime], str], path: str, user: str, message: str
) -> None:
    """An unknown user or group, or an id outside the namespace, never starts a command."""
    rts, sid = runtimes
    with pytest.raises(SpawnError, match=message):
        await rts[path].exec(sid, ExecSpec(argv=["true"], user=user))


@on_session_loop
@pytest.mark.root
@pytest.mark.parametrize("path", PATHS)
async def test_a_user_cannot_write_where_root_can(
    runtimes: tuple[dict[str, RuncRuntime], str], path: str
) -> None:
    """A non-root command gets EACCES in a root-owned 0755 directory and holds no capability;
    root writes there."""
    rts, sid = runtimes
    d = f"/srv/{path}"
    assert await run(rts[path], sid, f"mkdir -p -m 755 {d} && touch {d}/by-root", None) == (
        b"",
        0,
    )
    out, code = await run(rts[path], sid, f"touch {d}/by-app", "app")
    assert code == 1 and b"Permission denied" in out
    out, code = await run(rts[path], sid, "grep CapEff /proc/self/status", "app")
    assert (out.split(), code) == ([b"CapEff:", b"0000000000000000"], 0)
    out, code = await run(rts[path], sid, f"ls {d}", None)
    assert (out, code) == (b"by-root\n", 0)


@on_session_loop
@pytest.mark.root
@pytest.mark.parametrize("path", PATHS)
async def test_pty_command_as_a_user(
    runtimes: tuple[dict[str, RuncRuntime], str], path: str
) -> None:
    """A PTY command runs as the user, who owns its terminal."""
    rts, sid = runtimes
    proc = await rts[path].exec(sid, ExecSpec(argv=["/bin/sh"], pty=True, user="app:extra"))
    try:
        assert proc.stdin is not None
        proc.stdin.write(b'echo "ids=$(id -u):$(id -g) tty=$(stat -c %u $(tty))"; exit 3\n')
        seen = await asyncio.wait_for(proc.stdout.read(), QUICK)  # to EOF: the shell exits
        assert b"ids=1000:2000 tty=1000" in seen, seen
        assert await asyncio.wait_for(proc.wait(), QUICK) == 3
    finally:
        await proc.close()


@on_session_loop
@pytest.mark.root
async def test_kill_takes_a_users_command_tree(
    runtimes: tuple[dict[str, RuncRuntime], str],
) -> None:
    """A non-root command is in its freezer cgroup like any other: kill ends its whole tree."""
    rts, sid = runtimes
    proc = await rts["init"].exec(
        sid, ExecSpec(argv=["sh", "-c", "setsid sleep 300 & sleep 300"], user="app")
    )
    try:
        await proc.kill()
        assert await asyncio.wait_for(proc.wait(), QUICK) == 137
    finally:
        await proc.close()
