"""Run by the langsmith 0.15 SDK's python (not pytest): stream a command through a restart.

argv[1] is JSON ``{url, key, sandbox, command, before}``. Reads ``before`` bytes of stdout, says
``{"command_id": ...}`` on a line, waits for a line on stdin (the server is restarted
meanwhile), then goes on iterating the same handle (the SDK reconnects by itself from its
offsets) and prints a last JSON line with the length and sha256 of all stdout, the stderr and
the exit code.
"""

import hashlib
import json
import sys

from langsmith.sandbox import SandboxClient

args = json.loads(sys.argv[1])
client = SandboxClient(api_endpoint=f"{args['url']}/v2/sandboxes", api_key=args["key"])
sb = client.get_sandbox(args["sandbox"])
handle = sb.run(args["command"], wait=False, timeout=0)
digest = hashlib.sha256()
size = 0
err = []
told = False
for chunk in handle:
    if chunk.stream == "stdout":
        data = chunk.data.encode()
        digest.update(data)
        size += len(data)
    else:
        err.append(chunk.data)
    if not told and size >= args["before"]:
        print(json.dumps({"command_id": handle.command_id}), flush=True)
        sys.stdin.readline()
        told = True
result = handle.result
print(
    json.dumps(
        {
            "size": size,
            "sha256": digest.hexdigest(),
            "stderr": "".join(err),
            "exit_code": result.exit_code,
        }
    ),
    flush=True,
)
