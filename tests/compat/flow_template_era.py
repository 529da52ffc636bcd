"""Runs inside a venv with the public langsmith SDK: the template → sandbox → run → files flow.

Reads LANGSMITH_ENDPOINT / LANGSMITH_API_KEY; prints one JSON object of observations.
"""

import json
import sys

from langsmith.sandbox import ResourceNotFoundError, SandboxClient

out = {}
try:
    import websockets  # noqa: F401

    out["websockets"] = True
except ImportError:
    out["websockets"] = False

client = SandboxClient()
name = sys.argv[1]
image = sys.argv[2]
tpl = client.create_template(name, image, cpu="500m", memory="256Mi")
out["template"] = [tpl.name, tpl.image, tpl.resources.cpu, tpl.resources.memory]
out["templates"] = [t.name for t in client.list_templates()]
with client.sandbox(template_name=name) as sb:
    out["status"] = sb.status
    r = sb.run("echo hello; echo oops >&2; exit 3")
    out["run"] = [r.stdout, r.stderr, r.exit_code, r.success]
    r = sb.run("echo $A; pwd", env={"A": "1"}, cwd="/tmp")
    out["env_cwd"] = r.stdout
    sb.write("/app/script.sh", "echo from-script\n")
    out["script"] = sb.run("sh /app/script.sh").stdout
    sb.write("rel.bin", bytes(range(256)))
    out["binary_ok"] = sb.read("rel.bin") == bytes(range(256))
    out["text"] = sb.read("/app/script.sh").decode()
    try:
        sb.read("/does/not/exist")
    except ResourceNotFoundError as exc:
        out["missing"] = [type(exc).__name__, exc.resource_type]
    box_name = sb.name
    out["listed"] = box_name in [s.name for s in client.list_sandboxes()]
try:
    client.get_sandbox(box_name)
    out["deleted"] = False
except ResourceNotFoundError as exc:
    out["deleted"] = exc.resource_type == "sandbox"
client.delete_template(name)
print(json.dumps(out))
