"""Starting commands at a sandbox's limits: a typed error at the process limit, and a spawn
channel that stays in step when the init answers after the server gave up."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess

import pytest

from hutch.runtime._interface import ExecSpec, ResourceExhausted
from hutch.runtime.images import Image
from hutch.runtime.runc import RuncRuntime, _spawner
from tests.runtime.runc import test_runtime as base
from tests.runtime.runc import test_spawner as spawner_tests
from tests.runtime.runc.test_runtime import QUICK, make_spec, run, sh, until
from tests.runtime.runc.test_spawner import devnull, start

pytestmark = [pytest.mark.asyncio(loop_scope="session")]
image, runtime, data = base.image, base.runtime, base.data
init_binary, init, spawner = (
    spawner_tests.init_binary,
    spawner_tests.init,
    spawner_tests.spawner,
)


async def test_a_late_answer_to_an_abandoned_spawn_keeps_the_channel_in_step(
    init: tuple[subprocess.Popen[bytes], socket.socket],
    spawner: _spawner.Spawner,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An init too slow to answer (stopped here; starved of CPU in life): the spawn fails, its
    late SPAWNED and EXITED are consumed quietly, the child never runs and the next spawn works."""
    proc, _sock = init
    monkeypatch.setattr(_spawner, "SPAWN_TIMEOUT", 0.2)
    proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(_spawner.SpawnerError, match="did not answer"):
            await start(spawner, ["sh", "-c", "exit 3"], devnull())
    finally:
        proc.send_signal(signal.SIGCONT)
    monkeypatch.setattr(_spawner, "SPAWN_TIMEOUT", QUICK)
    with caplog.at_level(logging.WARNING, logger="hutch.runtime"):
        assert await until(lambda: not spawner._abandoned)
        exited = await start(spawner, ["sh", "-c", "exit 4"], devnull())
        assert await asyncio.wait_for(exited, QUICK) == 4 << 8
    assert not [r for r in caplog.records if "bad message" in r.getMessage()]
    assert not spawner._early_exits


@pytest.mark.root
async def test_at_the_process_limit_a_command_is_refused_until_processes_are_freed(
    runtime: RuncRuntime, image: Image
) -> None:
    """With the sandbox at its pids limit, exec raises ResourceExhausted (a SpawnError) saying so;
    once the command holding the processes is killed, commands run again."""
    spec = make_spec(image, pids_limit=32)
    await runtime.create(spec)
    # The init, 30 sleepers and the filler itself (exec'd into a sleeper): 32.
    fill = "i=0; while [ $i -lt 30 ]; do sleep 1000 & i=$((i+1)); done; exec sleep 1000"
    filler = await runtime.exec(spec.id, ExecSpec(argv=sh(fill)))
    try:
        pids = base.CGROUP / "pids" / "hutch" / spec.id
        assert await until(lambda: int((pids / "pids.current").read_text()) >= 32)
        for _ in range(3):  # refused each time, the channel to the init intact
            with pytest.raises(ResourceExhausted, match="limit of 32 processes"):
                await runtime.exec(spec.id, ExecSpec(argv=sh("echo hi")))
    finally:
        await filler.close()
    assert await run(runtime, spec.id, sh("echo ok")) == (b"ok\n", b"", 0)


@pytest.mark.root
async def test_killing_a_command_puts_the_sandboxs_cpu_quota_back(
    runtime: RuncRuntime, image: Image
) -> None:
    """A command's kill runs with the sandbox's CPU quota lifted, and the quota is back after it
    (concurrent kills included)."""
    spec = make_spec(image, cpu_millis=100)
    await runtime.create(spec)
    quota = base.CGROUP / "cpu" / "hutch" / spec.id / "cpu.cfs_quota_us"
    before = quota.read_text()
    assert before.strip() != "-1"
    procs = [await runtime.exec(spec.id, ExecSpec(argv=sh("sleep 300 & sleep 300"))) for _ in "ab"]
    try:
        await asyncio.gather(*(p.kill() for p in procs))
        assert [await asyncio.wait_for(p.wait(), QUICK) for p in procs] == [137, 137]
    finally:
        for p in procs:
            await p.close()
    assert quota.read_text() == before
