"""Runs inside a venv with the public langsmith SDK and websockets: ``sb.tunnel()`` to services
in a sandbox.

Arguments: template name, four free local ports (langsmith cannot rebind a port it closed in the
same process: its accept thread keeps the listening socket alive). Reads LANGSMITH_ENDPOINT /
LANGSMITH_API_KEY; prints one JSON object of observations.
"""

import hashlib
import json
import os
import socket
import sys
import threading
import time

from langsmith.sandbox import SandboxClient

template = sys.argv[1]
ports = [int(p) for p in sys.argv[2:6]]
out = {}


def recv_all(sock):
    sock.settimeout(30)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def wait_listening(sb, *ports):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        listening = sb.run("netstat -ltn").stdout
        if all(f":{port} " in listening for port in ports):
            return
        time.sleep(0.05)
    raise RuntimeError("services did not start")


client = SandboxClient()
with client.sandbox(template_name=template) as sb:
    out["name"] = sb.name
    sb.run("mkdir -p /www && hostname > /www/hostname && httpd -p 127.0.0.1:8080 -h /www")
    sb.run("nc -ll -p 7000 -e /bin/cat </dev/null >/dev/null 2>&1 &")
    wait_listening(sb, 8080, 7000)

    with sb.tunnel(remote_port=8080, local_port=ports[0]) as t:
        out["local_port"] = t.local_port
        with socket.create_connection(("127.0.0.1", t.local_port), timeout=30) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            out["http_body"] = recv_all(s).partition(b"\r\n\r\n")[2].decode()

    # Two tunnels at once; three concurrent 3 MiB echoes (half-close unaware client: each side
    # reads exactly what it sent).
    with (
        sb.tunnel(remote_port=7000, local_port=ports[1]) as echo,
        sb.tunnel(remote_port=8080, local_port=ports[2]) as web,
    ):
        results = []

        def transfer(i):
            payload = os.urandom(3 * 1024 * 1024)
            with socket.create_connection(("127.0.0.1", echo.local_port), timeout=30) as s:
                sender = threading.Thread(target=s.sendall, args=(payload,))
                sender.start()
                got = b""
                while len(got) < len(payload):
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                sender.join()
            results.append(hashlib.sha256(got).digest() == hashlib.sha256(payload).digest())

        threads = [threading.Thread(target=transfer, args=(i,)) for i in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        out["echo_ok"] = results
        with socket.create_connection(("127.0.0.1", web.local_port), timeout=30) as s:
            s.sendall(b"GET /hostname HTTP/1.0\r\n\r\n")
            out["second_tunnel_body"] = recv_all(s).partition(b"\r\n\r\n")[2].decode()

    # Nothing listens on 7999 inside: the local connection is closed (status 2, only logged).
    with (
        sb.tunnel(remote_port=7999, local_port=ports[3]) as dead,
        socket.create_connection(("127.0.0.1", dead.local_port), timeout=30) as s,
    ):
        try:
            out["refused_read"] = recv_all(s).decode()
        except ConnectionResetError:
            out["refused_read"] = ""
print(json.dumps(out))
