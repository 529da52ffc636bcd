"""A test service run *inside* a sandbox (python3 stdlib only): ``python3 service_app.py PORT``.

* ``GET /``: an HTML page that opens a WebSocket to ``./ws`` (same origin, so the service cookie
  goes along), sends ``ping from the page`` and shows the echo in ``#echo``;
* ``GET /headers``: the request line and headers as JSON;
* ``POST /echo``: the body's length and SHA-256 (Content-Length or chunked bodies);
* ``GET /big?n=N``: N bytes of ``x`` in chunks of 64 KiB, without a Content-Length;
* ``GET /redirect``: a 302 to ``/headers`` that sets a cookie for ``/`` and another domain;
* ``GET /lastclose``: the close code of the last WebSocket a client closed, as JSON;
* ``GET /ws``: a minimal RFC 6455 echo server. It picks the first offered subprotocol, echoes
  text and binary messages, answers pings, echoes close frames, and on the text ``headers``
  answers the handshake's headers as JSON, on ``close:CODE`` closes with that code.
"""

import base64
import hashlib
import http.server
import json
import socketserver
import struct
import sys

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
LAST_CLOSE = {"code": None}
PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>sandbox service</title></head>
<body><h1>hello from the sandbox</h1><p id="echo">waiting</p>
<script>
const url = location.href.replace(/^http/, "ws").replace(/[^/]*([?#].*)?$/, "ws");
const ws = new WebSocket(url);
ws.onopen = () => ws.send("ping from the page");
ws.onmessage = (e) => { document.getElementById("echo").textContent = "echo: " + e.data; };
ws.onerror = () => { document.getElementById("echo").textContent = "websocket failed"; };
</script></body></html>
"""


def read_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def read_frame(f):
    b0, b1 = read_exact(f, 2)
    opcode, masked, length = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exact(f, 2))
    elif length == 127:
        (length,) = struct.unpack("!Q", read_exact(f, 8))
    mask = read_exact(f, 4) if masked else b"\0\0\0\0"
    data = bytearray(read_exact(f, length))
    for i in range(length):
        data[i] ^= mask[i % 4]
    return b0 & 0x80, opcode, bytes(data)


def write_frame(w, opcode, data):
    n = len(data)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 127, n)
    w.write(head + data)
    w.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, ctype="application/json", extra=()):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def seen(self):
        return {"path": self.path, "headers": [list(h) for h in self.headers.items()]}

    def do_GET(self):
        if self.path.endswith("/ws") and self.headers.get("Upgrade", "").lower() == "websocket":
            return self.websocket()
        if self.path == "/":
            return self.reply(200, PAGE, "text/html; charset=utf-8")
        if self.path == "/lastclose":
            return self.reply(200, json.dumps(LAST_CLOSE).encode())
        if self.path == "/headers":
            return self.reply(200, json.dumps(self.seen()).encode())
        if self.path.startswith("/big?n="):
            n = int(self.path.split("=", 1)[1])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            while n > 0:
                step = min(n, 65536)
                self.wfile.write(b"x" * step)
                n -= step
            self.close_connection = True
            return None
        if self.path == "/redirect":
            return self.reply(
                302,
                b"",
                extra=[
                    ("Location", "/headers"),
                    ("Set-Cookie", "app=1; Path=/; Domain=example.com; HttpOnly"),
                    ("Service-Worker-Allowed", "/"),
                    ("Strict-Transport-Security", "max-age=60"),
                ],
            )
        return self.reply(404, b'{"error": "no such page"}')

    def do_POST(self):
        digest, size = hashlib.sha256(), 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                n = int(self.rfile.readline().split(b";")[0], 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b""):
                        pass
                    break
                chunk = read_exact(self.rfile, n)
                digest.update(chunk)
                size += n
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 65536))
                digest.update(chunk)
                size += len(chunk)
                left -= len(chunk)
        body = {"size": size, "sha256": digest.hexdigest(), **self.seen()}
        return self.reply(200, json.dumps(body).encode())

    def websocket(self):
        key = self.headers["Sec-WebSocket-Key"].encode()
        accept = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        offered = self.headers.get("Sec-WebSocket-Protocol")
        if offered:
            self.send_header("Sec-WebSocket-Protocol", offered.split(",")[0].strip())
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        try:
            while True:
                _, opcode, data = read_frame(self.rfile)
                if opcode == 0x8:
                    LAST_CLOSE["code"] = struct.unpack("!H", data[:2])[0] if data else 1005
                    write_frame(self.wfile, 0x8, data[:2])
                    return
                if opcode == 0x9:
                    write_frame(self.wfile, 0xA, data)
                elif data == b"headers":
                    write_frame(self.wfile, 0x1, json.dumps(self.seen()).encode())
                elif opcode == 0x1 and data.startswith(b"close:"):
                    write_frame(self.wfile, 0x8, struct.pack("!H", int(data[6:])) + b"bye")
                    read_frame(self.rfile)  # the echo of our close
                    return
                elif opcode in (0x1, 0x2):
                    write_frame(self.wfile, opcode, data)
        except (EOFError, OSError):
            return


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


if __name__ == "__main__":
    Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
