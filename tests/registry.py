"""A real local OCI registry for tests: Debian's ``docker-registry`` on 127.0.0.1 (plain http),
optionally with htpasswd (bcrypt) authentication, and helpers to push images with ``skopeo``."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "hutch", "s3cret-pass"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Registry:
    host: str  # "127.0.0.1:<port>"
    root: Path
    proc: subprocess.Popen[bytes]
    log: Path
    auth: bool

    def skopeo(self, *args: str) -> str:
        proc = subprocess.run(
            ["skopeo", "--insecure-policy", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"skopeo {' '.join(args)} failed: {proc.stderr}")
        return proc.stdout

    def push(self, source: str, repository: str, *, all_platforms: bool = False) -> str:
        """``skopeo copy SOURCE docker://HOST/REPOSITORY``; returns the pushed manifest digest."""
        digest_file = self.root.parent / f"digest-{time.monotonic_ns()}"
        args = ["copy", "--quiet", "--dest-tls-verify=false", "--digestfile", str(digest_file)]
        if all_platforms:
            args.append("--all")
        if self.auth:
            args += ["--dest-creds", f"{USER}:{PASSWORD}"]
        self.skopeo(*args, source, f"docker://{self.host}/{repository}")
        return digest_file.read_text().strip()

    def manifest_requests(self, repository: str) -> int:
        """How many times the registry served a manifest of ``repository`` (its access log)."""
        needle = f"GET /v2/{repository}/manifests/"
        return sum(needle in line for line in self.log.read_text().splitlines())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_registry(workdir: Path, *, auth: bool = False) -> Registry:
    """Start ``docker-registry`` on a free loopback port with its storage in ``workdir``."""
    if shutil.which(REGISTRY_BIN) is None:
        raise RuntimeError(f"{REGISTRY_BIN} is missing: install the Debian package docker-registry")
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    config = {
        "version": 0.1,
        "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(workdir / "storage")}},
        "http": {"addr": f"127.0.0.1:{port}", "secret": "hutch-tests"},
    }
    if auth:
        htpasswd = workdir / "htpasswd"
        subprocess.run(
            ["htpasswd", "-Bbc", str(htpasswd), USER, PASSWORD], check=True, capture_output=True
        )
        config["auth"] = {"htpasswd": {"realm": "hutch-tests", "path": str(htpasswd)}}
    (workdir / "config.yml").write_text(json.dumps(config))  # YAML is a superset of JSON
    log = workdir / "registry.log"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(workdir / "config.yml")], stdout=out, stderr=out
        )
    registry = Registry(f"127.0.0.1:{port}", workdir, proc, log, auth)
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"http://{registry.host}/v2/", timeout=1).status_code in (200, 401):
                return registry
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            registry.stop()
            raise RuntimeError(f"docker-registry did not start: {log.read_text()}")
        time.sleep(0.05)


def auth_file(path: Path, host: str, user: str = USER, password: str = PASSWORD) -> Path:
    """A containers-auth.json with credentials for ``host``."""
    import base64

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    path.write_text(json.dumps({"auths": {host: {"auth": token}}}))
    path.chmod(0o600)
    return path


def mirror_conf(path: Path, mirror: str) -> Path:
    """A registries.conf sending docker.io pulls to ``mirror`` (plain http)."""
    path.write_text(
        "[[registry]]\n"
        'prefix = "docker.io"\n'
        'location = "docker.io"\n'
        "[[registry.mirror]]\n"
        f'location = "{mirror}"\n'
        "insecure = true\n"
    )
    return path


# -- a multi-architecture OCI layout -----------------------------------------------------------


def _blob(layout: Path, data: bytes) -> dict[str, object]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def marker_layer(text: str) -> bytes:
    """An uncompressed layer with one file, ``/arch``, holding ``text``."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("arch")
        info.size, info.mode, info.mtime = len(text), 0o644, 1_600_000_000
        tar.addfile(info, io.BytesIO(text.encode()))
    return buf.getvalue()


def multi_arch_layout(layout: Path, base_tar: Path, arches: tuple[str, ...]) -> dict[str, str]:
    """An OCI layout whose index lists one manifest per architecture, each ``base_tar`` plus a
    layer with ``/arch`` naming it. Returns {arch: manifest digest}."""
    layout.mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    base = base_tar.read_bytes()
    digests: dict[str, str] = {}
    entries = []
    for arch in arches:
        layers = [base, marker_layer(arch)]
        config = {
            "architecture": arch,
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
            "rootfs": {
                "type": "layers",
                "diff_ids": [f"sha256:{hashlib.sha256(layer).hexdigest()}" for layer in layers],
            },
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                **_blob(layout, json.dumps(config).encode()),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    **_blob(layout, gzip.compress(layer, mtime=0)),
                }
                for layer in layers
            ],
        }
        descriptor = _blob(layout, json.dumps(manifest).encode())
        digests[arch] = str(descriptor["digest"])
        entries.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                **descriptor,
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }
    outer = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.index.v1+json",
                **_blob(layout, json.dumps(index).encode()),
                "annotations": {"org.opencontainers.image.ref.name": "multi"},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(outer))
    return digests
