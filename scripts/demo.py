"""Scenario 1 of the SDK guide against a local hutch server with its embedded defaults.

Imports the locally built Python image (once), starts ``hutch serve`` (127.0.0.1:8080, data in
/var/lib/hutch), creates a template and a sandbox, runs ``python -c 'print(2 + 2)'`` and prints
its output, then stops the server. Run through ``make demo``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

CACHE = Path(os.environ.get("HUTCH_CACHE_DIR", "/var/cache/hutch"))
IMAGE_TAR = CACHE / "debian-python-3.11.tar"
IMAGE = "local/python:3.11"  # a Debian bookworm root filesystem with python3, built locally
PORT = int(os.environ.get("HUTCH_DEMO_PORT", "8080"))
HUTCH = [sys.executable, "-m", "hutch"]


def main() -> int:
    from hutch.server._config import default_data_dir

    data_dir = default_data_dir()
    have = subprocess.run(
        [*HUTCH, "image", "list", "--data-dir", str(data_dir)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    if not any(line.split("\t")[0] == IMAGE for line in have.splitlines()):
        subprocess.run(
            [*HUTCH, "image", "import", IMAGE, str(IMAGE_TAR), "--data-dir", str(data_dir)],
            check=True,
        )
    url = f"http://127.0.0.1:{PORT}"
    try:
        httpx.get(f"{url}/healthz", timeout=0.5)
    except httpx.HTTPError:
        pass
    else:
        print(
            f"port {PORT} is already in use; stop that server or set HUTCH_DEMO_PORT",
            file=sys.stderr,
        )
        return 1
    server = subprocess.Popen(
        [
            *HUTCH,
            "serve",
            "--port",
            str(PORT),
            "--data-dir",
            str(data_dir),
            "--log-level",
            "warning",
        ]
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                print("hutch serve did not start", file=sys.stderr)
                return 1
            time.sleep(0.1)
        key = os.environ.get("HUTCH_API_KEY") or (data_dir / "api-key").read_text().strip()
        return scenario_1(url, key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def scenario_1(url: str, key: str) -> int:
    from hutch import SandboxClient, SandboxClientError

    os.environ["HUTCH_ENDPOINT"] = url
    os.environ["HUTCH_API_KEY"] = key
    client = SandboxClient()  # reads HUTCH_ENDPOINT / HUTCH_API_KEY
    try:
        client.create_template(name="python-sandbox", image=IMAGE)
    except SandboxClientError:
        client.get_template("python-sandbox")  # made by an earlier run
    with client.sandbox(template_name="python-sandbox") as sb:
        where = sb.run("echo \"sandbox $(hostname), pid 1 is $(tr '\\0' ' ' </proc/1/cmdline)\"")
        print(where.stdout, end="", file=sys.stderr)
        result = sb.run("python -c 'print(2 + 2)'")
        print(result.stdout, end="")
        return 0 if result.success else 1


if __name__ == "__main__":
    sys.exit(main())
