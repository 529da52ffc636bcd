"""Sandboxes and kernel keyrings: no sandbox is charged a key, none can reach one, and so more
than ``kernel.keys.maxkeys`` (200) sandboxes live on one host under the one sandbox uid."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from hutch.runtime._interface import ExecSpec, SandboxSpec
from hutch.runtime.images import Image, ImageStore
from hutch.runtime.runc import RuncRuntime
from hutch.runtime.runc._keyring import session_keyring
from hutch.runtime.runc._userns import DEFAULT_BASE, RANGE, IdMap
from tests.runtime.runc import test_runtime as base
from tests.runtime.runc.test_runtime import QUICK, make_spec, run, sh

pytestmark = [pytest.mark.root, pytest.mark.asyncio(loop_scope="session")]
# The fixtures of the runtime's main tests: a module's image, a fresh runtime and data dir.
image, runtime, data = base.image, base.runtime, base.data

#: A host uid range of this test run's own, so that no other server's keys are counted with ours.
PRIVATE = IdMap(DEFAULT_BASE + RANGE * (64 + os.getpid() % 4096))
#: More than kernel.keys.maxkeys, the limit one uid's keys used to put on sandboxes per host.
MANY = 210


def keys_of(uid: int) -> int:
    """How many keys ``uid`` owns (``/proc/key-users``: "uid: usage n/ni qnkeys/max ...")."""
    for line in Path("/proc/key-users").read_text().splitlines():
        who, _, rest = line.partition(":")
        if int(who) == uid:
            return int(rest.split()[2].split("/")[0])
    return 0


@pytest.fixture
async def private(tmp_path: Path) -> AsyncIterator[RuncRuntime]:
    """A runtime whose sandboxes run as a host uid range nobody else on this host uses."""
    rt = RuncRuntime(tmp_path / "data", idmap=PRIVATE)
    try:
        yield rt
    finally:
        for sandbox_id in await rt.list_ids():
            await rt.delete(sandbox_id)
        await rt.aclose()


async def test_sandboxes_and_their_commands_own_no_keys(
    private: RuncRuntime, image: Image, tmp_path: Path
) -> None:
    """Sandboxes, commands started by their init and by runc exec (an adopted sandbox) are
    charged no key to the sandbox uid."""
    ids = []
    for _ in range(5):
        spec = make_spec(image)
        await private.create(spec)
        ids.append(spec.id)
    for sid in ids:  # as if started before parking: the second runtime takes runc exec
        (tmp_path / "data" / "sandboxes" / sid / "init.ctl").unlink()
    adopted = RuncRuntime(tmp_path / "data", idmap=PRIVATE)
    procs = []
    try:
        for sid in ids:
            for rt in (private, adopted):  # hutch-init, then runc exec
                procs.append(await rt.exec(sid, ExecSpec(argv=sh("sleep 300"))))
        assert (await run(adopted, ids[0], sh("echo via runc")))[::2] == (b"via runc\n", 0)
        assert keys_of(PRIVATE.base) == 0
    finally:
        for proc in procs:
            await proc.close()
        await adopted.aclose()


async def test_the_server_holds_a_private_empty_session_keyring(private: RuncRuntime) -> None:
    """The keyring sandboxes inherit is an anonymous one of the server's, with no key in it."""
    serial = session_keyring()
    assert serial > 0
    for line in Path("/proc/keys").read_text().splitlines():
        fields = line.split()
        if int(fields[0], 16) == serial:
            assert fields[7:] == ["keyring", "_ses:", "empty"], line
            break
    else:
        raise AssertionError(f"session keyring {serial:x} not in /proc/keys")


#: keyctl(GET_KEYRING_ID, session), add_key and request_key from inside a sandbox: errno each.
KEYCTL = r"""
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
SYS = {"x86_64": (250, 248, 249), "aarch64": (219, 217, 218)}[os.uname().machine]
def errno(res):
    return 0 if res >= 0 else ctypes.get_errno()
print(errno(libc.syscall(SYS[0], 0, -3, 1)))
print(errno(libc.syscall(SYS[1], b"user", b"k", b"v", 1, -3)))
print(errno(libc.syscall(SYS[2], b"user", b"k", None, -3)))
"""


@pytest.fixture(scope="module")
def python_image(tmp_path_factory: pytest.TempPathFactory, python_tar: Path) -> Image:
    store = ImageStore(tmp_path_factory.mktemp("keyring-images") / "store")
    return store.import_path("local/python", python_tar)


async def test_a_sandbox_can_neither_read_nor_add_keys(
    private: RuncRuntime, python_image: Image
) -> None:
    """Reading the session keyring, adding and requesting a key fail with EPERM in a sandbox."""
    spec = make_spec(python_image)
    await private.create(spec)
    out, err, code = await run(private, spec.id, ["python3", "-c", KEYCTL])
    assert (out, code) == (b"1\n1\n1\n", 0), err


async def test_more_than_200_sandboxes_live_on_one_host(runtime: RuncRuntime, image: Image) -> None:
    """210 sandboxes under the default sandbox uid are all up at once and run commands."""
    gate = asyncio.Semaphore(4)
    specs = [make_spec(image) for _ in range(MANY)]

    async def create(spec: SandboxSpec) -> None:
        async with gate:
            await asyncio.wait_for(runtime.create(spec), QUICK)

    await asyncio.gather(*(create(spec) for spec in specs))
    assert all(await asyncio.gather(*(runtime.is_running(s.id) for s in specs[::10])))
    for spec in specs[:: MANY // 7]:
        assert await run(runtime, spec.id, sh("echo $HOSTNAME")) == (
            f"{spec.hostname}\n".encode(),
            b"",
            0,
        )
    ids = {s.id for s in specs}

    async def delete(sandbox_id: str) -> None:
        async with gate:
            await runtime.delete(sandbox_id)

    await asyncio.gather(*(delete(sid) for sid in ids))
    assert not ids & await runtime.list_ids()
