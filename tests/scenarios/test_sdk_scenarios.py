"""The documented SDK scenarios (spec ``sdk-usage.md``) against a real server, sync and async.

Every scenario except 10 (tunnels) and 14 (UI), each through ``from hutch import …`` exactly as
a user writes it. Scenarios that need Python (1, 5, 8, 11) use the Debian image; the rest use
busybox, which is faster to start.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

import pytest

from hutch import (
    AsyncSandbox,
    AsyncSandboxClient,
    CommandTimeoutError,
    ResourceNotFoundError,
    Sandbox,
    SandboxClient,
    SandboxClientError,
    SandboxOperationError,
)
from tests.conftest import REPO, TIME_SCALE, Server, wait_until

pytestmark = pytest.mark.root

#: How long something that should happen "at once" may take (scaled for slow machines).
PROMPT = 5 * TIME_SCALE

# A "build": ten steps on stdout and ten warnings on stderr, in two halves 0.5 s apart so that
# streaming (chunks arriving while it runs) is observable.
BUILD = (
    'for i in 1 2 3 4 5; do echo "compiling $i"; echo "warning $i" >&2; done; sleep 0.5; '
    'for i in 6 7 8 9 10; do echo "compiling $i"; echo "warning $i" >&2; done; echo "build ok"'
)
BUILD_OUT = "".join(f"compiling {i}\n" for i in range(1, 11)) + "build ok\n"
BUILD_ERR = "".join(f"warning {i}\n" for i in range(1, 11))

# A longer build for reconnects: 30 steps 50 ms apart.
LONG_BUILD = (
    'for i in $(seq 1 30); do echo "step $i"; echo "note $i" >&2; sleep 0.05; done; echo built'
)
LONG_OUT = "".join(f"step {i}\n" for i in range(1, 31)) + "built\n"
LONG_ERR = "".join(f"note {i}\n" for i in range(1, 31))

ASK_NAME = "python3 -c \"name = input('Name: '); print('Hello', name)\""


def _ps(sb: Sandbox) -> str:
    return sb.run("ps -o args").stdout


async def _aps(sb: AsyncSandbox) -> str:
    return (await sb.run("ps -o args")).stdout


async def _await_until(predicate: Callable[[], Awaitable[bool]], timeout: float) -> bool:
    """``wait_until`` for async predicates (deadline scaled by TIME_SCALE)."""
    deadline = time.monotonic() + timeout * TIME_SCALE
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.05)
    return await predicate()


def _script(code: str, *args: str, block_websockets: bool = False) -> dict[str, object]:
    """Run ``code`` in a fresh Python process (optionally without ``websockets``); its JSON."""
    prelude = "import sys\n"
    if block_websockets:
        prelude += "sys.modules['websockets'] = None  # as if the package were not installed\n"
    proc = subprocess.run(
        [sys.executable, "-c", prelude + code, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60 * TIME_SCALE,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert isinstance(result, dict)
    return result


# -- 1. Python template: print(2 + 2) ------------------------------------------------------------


def test_1_python_template_prints_4(client: SandboxClient, python_template: str) -> None:
    """A sandbox from a Python-image template runs python -c 'print(2 + 2)': "4\\n", success."""
    with client.sandbox(template_name=python_template) as sb:
        result = sb.run("python -c 'print(2 + 2)'")
    assert (result.stdout, result.stderr, result.success) == ("4\n", "", True)
    with pytest.raises(ResourceNotFoundError):  # the context manager deleted it
        client.get_sandbox(sb.name)


async def test_1_python_template_prints_4_async(
    aclient: AsyncSandboxClient, python_template: str
) -> None:
    """Async: the same sandbox-from-template flow prints "4\\n" with success."""
    async with await aclient.sandbox(template_name=python_template) as sb:
        result = await sb.run("python -c 'print(2 + 2)'")
    assert (result.stdout, result.stderr, result.success) == ("4\n", "", True)
    with pytest.raises(ResourceNotFoundError):
        await aclient.get_sandbox(sb.name)


# -- 2. Hello world and exit 1 -------------------------------------------------------------------


def test_2_hello_world_and_exit_1(bb_sb: Sandbox) -> None:
    """echo gives exact stdout, empty stderr, exit 0; `exit 1` is success false, exit code 1."""
    result = bb_sb.run("echo 'Hello, World!'")
    assert (result.stdout, result.stderr, result.exit_code, result.success) == (
        "Hello, World!\n",
        "",
        0,
        True,
    )
    result = bb_sb.run("exit 1")
    assert (result.success, result.exit_code) == (False, 1)


async def test_2_hello_world_and_exit_1_async(abb_sb: AsyncSandbox) -> None:
    """Async: echo and `exit 1` give the same results."""
    result = await abb_sb.run("echo 'Hello, World!'")
    assert (result.stdout, result.stderr, result.exit_code, result.success) == (
        "Hello, World!\n",
        "",
        0,
        True,
    )
    result = await abb_sb.run("exit 1")
    assert (result.success, result.exit_code) == (False, 1)


# -- 3. A long build streamed through callbacks --------------------------------------------------


def _check_streamed(events: list[tuple[str, float, str]], stdout: str, stderr: str) -> None:
    """Callback chunks, in call order, concatenate to the result; they arrived over time."""
    assert "".join(d for s, _, d in events if s == "stdout") == stdout == BUILD_OUT
    assert "".join(d for s, _, d in events if s == "stderr") == stderr == BUILD_ERR
    first = min(t for s, t, d in events if s == "stdout" and "compiling 1\n" in d)
    last = max(t for s, t, d in events if s == "stdout" and "build ok" in d)
    assert last - first >= 0.3, "callbacks fired only at the end, not as output arrived"


def test_3_build_streamed_with_callbacks(bb_sb: Sandbox) -> None:
    """timeout=600 with on_stdout/on_stderr: chunks arrive as printed and add up to the result."""
    events: list[tuple[str, float, str]] = []
    result = bb_sb.run(
        BUILD,
        timeout=600,
        on_stdout=lambda d: events.append(("stdout", time.monotonic(), d)),
        on_stderr=lambda d: events.append(("stderr", time.monotonic(), d)),
    )
    assert result.success
    _check_streamed(events, result.stdout, result.stderr)


async def test_3_build_streamed_with_callbacks_async(abb_sb: AsyncSandbox) -> None:
    """Async: the callbacks see the build as it runs and add up to the result."""
    events: list[tuple[str, float, str]] = []
    result = await abb_sb.run(
        BUILD,
        timeout=600,
        on_stdout=lambda d: events.append(("stdout", time.monotonic(), d)),
        on_stderr=lambda d: events.append(("stderr", time.monotonic(), d)),
    )
    assert result.success
    _check_streamed(events, result.stdout, result.stderr)


# -- 4. The same build with wait=False ----------------------------------------------------------


def _check_prefixed(prefixed: list[str]) -> None:
    out = "".join(p.removeprefix("[stdout] ") for p in prefixed if p.startswith("[stdout] "))
    err = "".join(p.removeprefix("[stderr] ") for p in prefixed if p.startswith("[stderr] "))
    assert (out, err) == (BUILD_OUT, BUILD_ERR)
    assert all(p.startswith(("[stdout] ", "[stderr] ")) for p in prefixed)


def test_4_build_with_handle(bb_sb: Sandbox) -> None:
    """wait=False: the handle has the command_id asked for; chunks prefixed by stream; exit 0."""
    command_id = f"build-{uuid.uuid4().hex}"
    handle = bb_sb.run(BUILD, timeout=600, wait=False, command_id=command_id)
    assert handle.command_id == command_id
    prefixed = [f"[{chunk.stream}] {chunk.data}" for chunk in handle]
    _check_prefixed(prefixed)
    assert handle.result.exit_code == 0


async def test_4_build_with_handle_async(abb_sb: AsyncSandbox) -> None:
    """Async: async iteration of the handle, prefixed by stream; await handle.result."""
    command_id = f"build-{uuid.uuid4().hex}"
    handle = await abb_sb.run(BUILD, timeout=600, wait=False, command_id=command_id)
    assert handle.command_id == command_id
    prefixed = [f"[{chunk.stream}] {chunk.data}" async for chunk in handle]
    _check_prefixed(prefixed)
    assert (await handle.result).exit_code == 0


# -- 5. stdin: answering a prompt ---------------------------------------------------------------


def test_5_stdin_answers_a_prompt(py_sb: Sandbox) -> None:
    """input('Name: ') gets "World\\n" sent when "Name:" shows up; the output says Hello World."""
    handle = py_sb.run(ASK_NAME, timeout=30, wait=False)
    answered = False
    for chunk in handle:
        if "Name:" in chunk.data:
            handle.send_input("World\n")
            answered = True
    assert answered
    result = handle.result
    assert (result.stdout, result.exit_code) == ("Name: Hello World\n", 0)


async def test_5_stdin_answers_a_prompt_async(apy_sb: AsyncSandbox) -> None:
    """Async: the prompt is answered with await handle.send_input; Hello World."""
    handle = await apy_sb.run(ASK_NAME, timeout=30, wait=False)
    answered = False
    async for chunk in handle:
        if "Name:" in chunk.data:
            await handle.send_input("World\n")
            answered = True
    assert answered
    result = await handle.result
    assert (result.stdout, result.exit_code) == ("Name: Hello World\n", 0)


# -- 6. kill: stop a server after it is ready ---------------------------------------------------


def test_6_kill_server_after_ready(bb_sb: Sandbox) -> None:
    """timeout=0, wait=False: stop at "Ready", kill(); the server process is gone (ps)."""
    handle = bb_sb.run("echo Ready; sleep 606", timeout=0, wait=False)
    for chunk in handle:
        if "Ready" in chunk.data:
            break
    assert "sleep 606" in _ps(bb_sb)
    handle.kill()
    assert wait_until(lambda: "sleep 606" not in _ps(bb_sb), PROMPT, interval=0.1)
    assert bb_sb.reconnect(handle.command_id).result.exit_code == 137


async def test_6_kill_server_after_ready_async(abb_sb: AsyncSandbox) -> None:
    """Async: await handle.kill() after "Ready"; the server process is gone."""
    handle = await abb_sb.run("echo Ready; sleep 607", timeout=0, wait=False)
    async for chunk in handle:
        if "Ready" in chunk.data:
            break
    assert "sleep 607" in await _aps(abb_sb)
    await handle.kill()

    async def gone() -> bool:
        return "sleep 607" not in await _aps(abb_sb)

    assert await _await_until(gone, PROMPT)
    assert (await (await abb_sb.reconnect(handle.command_id)).result).exit_code == 137


# -- 7. reconnect from another process ----------------------------------------------------------

RECONNECT_SYNC = """
import json
from hutch import SandboxClient

endpoint, key, name, command_id = sys.argv[1:5]
with SandboxClient(api_endpoint=endpoint, api_key=key) as client:
    handle = client.get_sandbox(name).reconnect(command_id)
    chunks = [[c.stream, c.data] for c in handle]
    r = handle.result
print(json.dumps({"chunks": chunks, "result": [r.stdout, r.stderr, r.exit_code]}))
"""

RECONNECT_ASYNC = """
import asyncio, json
from hutch import AsyncSandboxClient

async def main(endpoint, key, name, command_id):
    async with AsyncSandboxClient(api_endpoint=endpoint, api_key=key) as client:
        sb = await client.get_sandbox(name)
        handle = await sb.reconnect(command_id)
        chunks = [[c.stream, c.data] async for c in handle]
        r = await handle.result
    return {"chunks": chunks, "result": [r.stdout, r.stderr, r.exit_code]}

print(json.dumps(asyncio.run(main(*sys.argv[1:5]))))
"""


def _check_replay(got: dict[str, object]) -> None:
    chunks = got["chunks"]
    assert isinstance(chunks, list)
    assert "".join(d for s, d in chunks if s == "stdout") == LONG_OUT
    assert "".join(d for s, d in chunks if s == "stderr") == LONG_ERR
    assert got["result"] == [LONG_OUT, LONG_ERR, 0]


@pytest.mark.parametrize("code", [RECONNECT_SYNC, RECONNECT_ASYNC], ids=["sync", "async"])
def test_7_reconnect_from_another_process(server: Server, bb_sb: Sandbox, code: str) -> None:
    """Another process (sync or async SDK) reconnects by command_id: all output, and the result."""
    handle = bb_sb.run(LONG_BUILD, timeout=600, wait=False)
    assert next(iter(handle)).data in ("step 1\n", "note 1\n")
    handle.close()  # this process lets go; the build goes on
    got = _script(code, server.base, server.key, bb_sb.name, handle.command_id)
    _check_replay(got)


async def test_7_reconnect_from_another_process_async_start(
    server: Server, abb_sb: AsyncSandbox
) -> None:
    """Async start, then a sync SDK in another process reconnects and gets everything."""
    handle = await abb_sb.run(LONG_BUILD, timeout=600, wait=False)
    first = await anext(handle)
    assert first.data in ("step 1\n", "note 1\n")
    await handle.aclose()
    got = await asyncio.to_thread(
        _script, RECONNECT_SYNC, server.base, server.key, abb_sb.name, handle.command_id
    )
    _check_replay(got)


# -- 8. files ------------------------------------------------------------------------------------

SCRIPT = "import sys\nprint('script ran', sys.version_info[0])\n"
BLOB = bytes(range(256)) * 4 + b"\x00\xff\xfe"


def test_8_files(py_sb: Sandbox) -> None:
    """write /app/script.py, run it, read it back as bytes; binary bytes round-trip exactly."""
    py_sb.write("/app/script.py", SCRIPT)
    assert py_sb.run("python /app/script.py").stdout == "script ran 3\n"
    assert py_sb.read("/app/script.py") == SCRIPT.encode()
    py_sb.write("/app/data.bin", BLOB)
    assert py_sb.read("/app/data.bin") == BLOB
    assert py_sb.run("wc -c < /app/data.bin").stdout.strip() == str(len(BLOB))


async def test_8_files_async(apy_sb: AsyncSandbox) -> None:
    """Async: await write/read of text and binary files; the script runs."""
    await apy_sb.write("/app/ascript.py", SCRIPT)
    assert (await apy_sb.run("python /app/ascript.py")).stdout == "script ran 3\n"
    assert await apy_sb.read("/app/ascript.py") == SCRIPT.encode()
    await apy_sb.write("/app/adata.bin", BLOB)
    assert await apy_sb.read("/app/adata.bin") == BLOB


# -- 9. lifecycle: ttl_seconds, idle_timeout, kill_on_disconnect --------------------------------


def _expired(sb: Sandbox, command_id: str) -> bool:
    try:
        list(sb.reconnect(command_id))
    except SandboxOperationError as exc:
        assert exc.error_type == "SessionExpired", exc
        return True
    return False


def test_9_ttl_keeps_finished_session_then_expires(bb_sb: Sandbox) -> None:
    """A finished command can be re-attached within ttl_seconds=1; after it, SessionExpired."""
    handle = bb_sb.run("echo done", ttl_seconds=1, wait=False)
    assert handle.result.stdout == "done\n"
    finished = time.monotonic()
    replay = bb_sb.reconnect(handle.command_id).result
    assert (replay.stdout, replay.exit_code) == ("done\n", 0)
    assert wait_until(lambda: _expired(bb_sb, handle.command_id), 1 + PROMPT, interval=0.1)
    assert time.monotonic() - finished >= 0.8
    with pytest.raises(SandboxOperationError) as info:
        list(bb_sb.reconnect(handle.command_id))
    assert (info.value.operation, info.value.error_type) == ("reconnect", "SessionExpired")


async def test_9_ttl_keeps_finished_session_then_expires_async(abb_sb: AsyncSandbox) -> None:
    """Async: a reconnect within the TTL replays; after it, SessionExpired."""
    handle = await abb_sb.run("echo done", ttl_seconds=1, wait=False)
    assert (await handle.result).stdout == "done\n"
    finished = time.monotonic()
    replay = await (await abb_sb.reconnect(handle.command_id)).result
    assert (replay.stdout, replay.exit_code) == ("done\n", 0)

    async def expired() -> bool:
        try:
            await (await abb_sb.reconnect(handle.command_id)).result
        except SandboxOperationError as exc:
            assert exc.error_type == "SessionExpired", exc
            return True
        return False

    assert await _await_until(expired, 1 + PROMPT)
    assert time.monotonic() - finished >= 0.8


def test_9_idle_timeout_kills_detached_command(bb_sb: Sandbox) -> None:
    """idle_timeout=1: with no client attached the command is killed after ~1 s (exit 137)."""
    handle = bb_sb.run("echo started; sleep 691", timeout=0, idle_timeout=1, wait=False)
    assert next(iter(handle)).data == "started\n"
    handle.close()  # the socket closes: no client is attached any more
    detached = time.monotonic()
    assert "sleep 691" in _ps(bb_sb)  # not killed at once
    assert wait_until(lambda: "sleep 691" not in _ps(bb_sb), 1 + PROMPT, interval=0.1)
    assert time.monotonic() - detached >= 0.8
    result = bb_sb.reconnect(handle.command_id).result
    assert (result.stdout, result.exit_code) == ("started\n", 137)


async def test_9_idle_timeout_kills_detached_command_async(abb_sb: AsyncSandbox) -> None:
    """Async: aclose() detaches; the idle timeout kills the command; reconnect shows 137."""
    handle = await abb_sb.run("echo started; sleep 692", timeout=0, idle_timeout=1, wait=False)
    assert (await anext(handle)).data == "started\n"
    await handle.aclose()
    detached = time.monotonic()
    assert "sleep 692" in await _aps(abb_sb)

    async def gone() -> bool:
        return "sleep 692" not in await _aps(abb_sb)

    assert await _await_until(gone, 1 + PROMPT)
    assert time.monotonic() - detached >= 0.8
    result = await (await abb_sb.reconnect(handle.command_id)).result
    assert (result.stdout, result.exit_code) == ("started\n", 137)


def test_9_idle_timeout_spares_attached_command(bb_sb: Sandbox) -> None:
    """idle_timeout=1 never fires while a client stays attached (here for 3.2 s, over 3x)."""
    start = time.monotonic()
    result = bb_sb.run("sleep 3.2; echo survived", timeout=0, idle_timeout=1)
    assert time.monotonic() - start >= 3.2
    assert (result.stdout, result.exit_code) == ("survived\n", 0)


async def test_9_idle_timeout_spares_attached_command_async(abb_sb: AsyncSandbox) -> None:
    """Async: an attached handle (iterating) keeps an idle_timeout=1 command alive for 3.2 s."""
    start = time.monotonic()
    handle = await abb_sb.run("sleep 3.2; echo survived", timeout=0, idle_timeout=1, wait=False)
    result = await handle.result
    assert time.monotonic() - start >= 3.2
    assert (result.stdout, result.exit_code) == ("survived\n", 0)


def test_9_kill_on_disconnect(bb_sb: Sandbox) -> None:
    """kill_on_disconnect=True: the command dies as soon as its last client detaches."""
    handle = bb_sb.run("echo up; sleep 693", timeout=0, kill_on_disconnect=True, wait=False)
    assert next(iter(handle)).data == "up\n"
    handle.close()
    assert wait_until(lambda: "sleep 693" not in _ps(bb_sb), PROMPT, interval=0.05)
    result = bb_sb.reconnect(handle.command_id).result
    assert (result.stdout, result.exit_code) == ("up\n", 137)


async def test_9_kill_on_disconnect_async(abb_sb: AsyncSandbox) -> None:
    """Async: aclose() of the only handle kills a kill_on_disconnect command at once."""
    handle = await abb_sb.run("echo up; sleep 694", timeout=0, kill_on_disconnect=True, wait=False)
    assert (await anext(handle)).data == "up\n"
    await handle.aclose()

    async def gone() -> bool:
        return "sleep 694" not in await _aps(abb_sb)

    assert await _await_until(gone, PROMPT)
    result = await (await abb_sb.reconnect(handle.command_id)).result
    assert (result.stdout, result.exit_code) == ("up\n", 137)


def test_9_long_job_and_fire_and_forget_options(bb_sb: Sandbox) -> None:
    """Long-job and fire-and-forget options (-1 or None: never) are accepted and work."""
    result = bb_sb.run("echo long job", timeout=0, idle_timeout=1800, ttl_seconds=3600)
    assert (result.stdout, result.success) == ("long job\n", True)
    for never in (-1, None):
        handle = bb_sb.run("echo fired", idle_timeout=never, ttl_seconds=never, wait=False)
        handle.close()
        replay = bb_sb.reconnect(handle.command_id).result
        assert (replay.stdout, replay.exit_code) == ("fired\n", 0)


async def test_9_long_job_and_fire_and_forget_options_async(abb_sb: AsyncSandbox) -> None:
    """Async: the long-job and fire-and-forget option combinations are accepted."""
    result = await abb_sb.run("echo long job", timeout=0, idle_timeout=1800, ttl_seconds=3600)
    assert (result.stdout, result.success) == ("long job\n", True)
    for never in (-1, None):
        handle = await abb_sb.run("echo fired", idle_timeout=never, ttl_seconds=never, wait=False)
        await handle.aclose()
        replay = await (await abb_sb.reconnect(handle.command_id)).result
        assert (replay.stdout, replay.exit_code) == ("fired\n", 0)


# -- 11. async: the flows end to end on the Python image ----------------------------------------


async def test_11_async_client_end_to_end(server: Server, python_template: str) -> None:
    """AsyncSandboxClient end to end: template, sandbox, run, async iteration, write/read."""
    name = f"py-async-{uuid.uuid4().hex[:8]}"
    async with AsyncSandboxClient(api_endpoint=server.base, api_key=server.key) as client:
        template = await client.create_template(name=name, image="local/python:3.11")
        assert template.name == name
        try:
            async with await client.sandbox(template_name=name) as sb:
                result = await sb.run("python -c 'print(2 + 2)'")
                assert (result.stdout, result.success) == ("4\n", True)
                handle = await sb.run(
                    'python3 -u -c \'import sys; print("out"); print("err", file=sys.stderr)\'',
                    wait=False,
                )
                chunks = [(c.stream, c.data) async for c in handle]
                assert "".join(d for s, d in chunks if s == "stdout") == "out\n"
                assert "".join(d for s, d in chunks if s == "stderr") == "err\n"
                assert (await handle.result).exit_code == 0
                await sb.write("/app/a.py", "print(6 * 7)\n")
                assert (await sb.run("python /app/a.py")).stdout == "42\n"
                assert await sb.read("/app/a.py") == b"print(6 * 7)\n"
        finally:
            await client.delete_template(name)


# -- 12. errors ----------------------------------------------------------------------------------


def test_12_errors(client: SandboxClient, bb_sb: Sandbox) -> None:
    """Timeout (10 s shortened to 1) and missing resources raise typed SandboxClientErrors."""
    start = time.monotonic()
    with pytest.raises(CommandTimeoutError) as timeout:
        bb_sb.run("sleep 999", timeout=1)
    assert time.monotonic() - start < 1 + PROMPT
    assert "sleep 999" not in _ps(bb_sb)
    missing: list[SandboxClientError] = [timeout.value]
    for call, resource_type in (
        (lambda: client.get_sandbox("no-such-sandbox"), "sandbox"),
        (lambda: client.get_template("no-such-template"), "template"),
        (lambda: bb_sb.read("/no/such/file"), "file"),
    ):
        with pytest.raises(ResourceNotFoundError) as info:
            call()
        assert info.value.resource_type == resource_type
        missing.append(info.value)
    assert all(isinstance(e, SandboxClientError) for e in missing)


async def test_12_errors_async(aclient: AsyncSandboxClient, abb_sb: AsyncSandbox) -> None:
    """Async: CommandTimeoutError and ResourceNotFoundError with its resource_type."""
    with pytest.raises(CommandTimeoutError) as timeout:
        await abb_sb.run("sleep 998", timeout=1)
    assert isinstance(timeout.value, SandboxClientError)
    for call, resource_type in (
        (lambda: aclient.get_sandbox("no-such-sandbox"), "sandbox"),
        (lambda: aclient.get_template("no-such-template"), "template"),
        (lambda: abb_sb.read("/no/such/file"), "file"),
    ):
        with pytest.raises(ResourceNotFoundError) as info:
            await call()
        assert info.value.resource_type == resource_type
        assert isinstance(info.value, SandboxClientError)


# -- 13. without websockets: HTTP fallback -------------------------------------------------------

NO_WEBSOCKETS_SYNC = """
import json
from hutch import SandboxClient

endpoint, key, name = sys.argv[1:4]
out = {}
with SandboxClient(api_endpoint=endpoint, api_key=key) as client:
    sb = client.get_sandbox(name)
    r = sb.run("echo over http; echo note >&2; exit 3")
    out["result"] = [r.stdout, r.stderr, r.exit_code]
    for what, kwargs in (("wait_false", {"wait": False}), ("callbacks", {"on_stdout": print})):
        try:
            sb.run("echo never", **kwargs)
        except ImportError as exc:
            out[what] = str(exc)
out["websockets"] = sys.modules.get("websockets", "absent")
print(json.dumps(out))
"""

NO_WEBSOCKETS_ASYNC = """
import asyncio, json
from hutch import AsyncSandboxClient

async def main(endpoint, key, name):
    out = {}
    async with AsyncSandboxClient(api_endpoint=endpoint, api_key=key) as client:
        sb = await client.get_sandbox(name)
        r = await sb.run("echo over http; echo note >&2; exit 3")
        out["result"] = [r.stdout, r.stderr, r.exit_code]
        for what, kwargs in (("wait_false", {"wait": False}), ("callbacks", {"on_stdout": print})):
            try:
                await sb.run("echo never", **kwargs)
            except ImportError as exc:
                out[what] = str(exc)
    out["websockets"] = sys.modules.get("websockets", "absent")
    return out

print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
"""


@pytest.mark.parametrize("code", [NO_WEBSOCKETS_SYNC, NO_WEBSOCKETS_ASYNC], ids=["sync", "async"])
def test_13_http_fallback_without_websockets(server: Server, bb_sb: Sandbox, code: str) -> None:
    """Without websockets run() falls back to HTTP; streaming raises ImportError."""
    got = _script(code, server.base, server.key, bb_sb.name, block_websockets=True)
    assert got["websockets"] is None  # still blocked: the fallback never imported it
    assert got["result"] == ["over http\n", "note\n", 3]
    for key in ("wait_false", "callbacks"):
        assert "websockets" in str(got.get(key)), got
