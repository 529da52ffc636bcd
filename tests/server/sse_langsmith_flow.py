"""Runs inside a virtualenv holding the public ``langsmith`` SDK (0.13+), with
``LANGSMITH_EXPERIMENTAL_FEATURES=sandbox_sse_exec``: drives one existing sandbox over the SSE exec
endpoints and prints one JSON object of observations (a check that raises records
``{"unexpected": "<Type>: <msg>"}``). Argument: the sandbox's name. Reads LANGSMITH_ENDPOINT and
LANGSMITH_API_KEY.
"""

import json
import sys

from langsmith.sandbox import CommandTimeoutError, SandboxClient, SandboxOperationError
from langsmith.sandbox import _sandbox as sandbox_module

NAME = sys.argv[1]
#: 9 MiB of output: more than one response carries (8 MiB), so the SDK must resume.
BIG = 9 * 1024 * 1024
OUT = {}


def observe(key, fn):
    try:
        OUT[key] = fn()
    except Exception as exc:
        OUT[key] = {"unexpected": f"{type(exc).__name__}: {exc}"}


def result_of(r):
    return {"stdout": r.stdout, "stderr": r.stderr, "exit_code": r.exit_code}


def main():
    # Without SSE selected, run() would now raise ImportError instead of using the WebSocket.
    sandbox_module.WEBSOCKETS_AVAILABLE = False
    paths = []
    with SandboxClient() as client:
        client._http.event_hooks["request"].append(lambda req: paths.append(req.url.path))
        sb = client.get_sandbox(NAME)

        observe("echo", lambda: result_of(sb.run("echo hi")))

        def callbacks():
            outs, errs = [], []
            r = sb.run(
                "for i in 1 2 3; do echo line$i; done; echo oops >&2",
                on_stdout=outs.append,
                on_stderr=errs.append,
            )
            return {"stdout": "".join(outs), "stderr": "".join(errs), "result": result_of(r)}

        observe("callbacks", callbacks)
        observe("failing", lambda: result_of(sb.run("echo bad >&2; exit 7")))
        observe(
            "run_config",
            lambda: result_of(
                sb.run(
                    'echo "$FOO:$(pwd)"',
                    run_config={"env_vars": {"FOO": "bar"}, "work_dir": "/tmp"},
                )
            ),
        )
        observe("env_cwd", lambda: result_of(sb.run('echo "$FOO:$(pwd)"', env={"FOO": "baz"})))
        observe("bytes", lambda: result_of(sb.run(r"printf 'h\303\251\377'")))

        def big():
            before = len(paths)
            handle = sb.run(f"head -c {BIG} /dev/zero | tr '\\0' a", wait=False)
            position, contiguous, size = 0, True, 0
            for chunk in handle:
                contiguous = contiguous and chunk.offset == position
                position = chunk.offset + len(chunk.data.encode())
                size += len(chunk.data)
            r = handle.result
            return {
                "size": size,
                "only_a": set(r.stdout) == {"a"},
                "exit_code": r.exit_code,
                "contiguous": contiguous,
                "requests": [p.rsplit("/", 1)[-1] for p in paths[before:]],
            }

        observe("big", big)

        def timeout():
            try:
                sb.run("sleep 30", timeout=1)
            except CommandTimeoutError as exc:
                return {"raised": "CommandTimeoutError", "str": str(exc)}
            return {"raised": None}

        observe("timeout", timeout)

        def reconnect():
            handle = sb.run("printf abcdef", wait=False)
            first = handle.result.stdout
            later = sb.reconnect(handle.command_id, stdout_offset=2)
            return {"first": first, "rest": later.result.stdout}

        observe("reconnect", reconnect)

        def unknown():
            try:
                sb.reconnect("0" * 32).result  # noqa: B018 - the property drives the stream
            except SandboxOperationError as exc:
                return {"type": type(exc).__name__, "error_type": exc.error_type}
            return None

        observe("unknown", unknown)
    OUT["paths"] = sorted({p.rsplit("/", 1)[-1] for p in paths})
    print(json.dumps(OUT))


main()
