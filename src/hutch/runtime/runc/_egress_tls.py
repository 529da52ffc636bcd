"""TLS interception for egress header rules: a per-server CA, leaf certificates per host, and a
server-side TLS stream over a connection whose ClientHello was already read.

Only connections to a host a header rule names are intercepted (see :mod:`_egress_proxy`); all
other TLS stays end to end. Certificates are made with ``cryptography``; TLS is Python's
``ssl`` (OpenSSL), on both sides: the sandbox's side with a leaf of the CA for the name it sent,
the upstream's side verified against the host's trust store (or ``HUTCH_EGRESS_CA_BUNDLE``, a
PEM file, when set: tests and private upstreams) with the same name, so the sandbox reaches the
real server or nothing.

The CA (``<data>/egress/ca/ca.pem``: key and certificate, mode 0600) is made on first use and
kept; sandboxes with rules get its certificate in their trust store (hutch.server._secrets).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import secrets
import ssl
import tempfile
from collections import OrderedDict
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CA_BUNDLE_ENV", "EgressCA", "TlsServerStream", "ca_dir", "upstream_context"]

CA_BUNDLE_ENV = "HUTCH_EGRESS_CA_BUNDLE"
CA_FILE = "ca.pem"
#: Leaf contexts kept (one per intercepted host name).
MAX_LEAVES = 256
CHUNK = 256 * 1024
_ALPN = ["http/1.1"]


#: What the CA's key may sign: certificates (and CRLs), nothing else.
_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def ca_dir(data_dir: Path) -> Path:
    """Where a server's interception CA is kept."""
    return data_dir / "egress" / "ca"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class EgressCA:
    """The server's interception CA (made once, kept in ``directory``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        path = directory / CA_FILE
        if not path.exists():
            self._make(path)
        data = path.read_bytes()
        self.cert = x509.load_pem_x509_certificate(data)
        key = serialization.load_pem_private_key(data, password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)
        self._leaves: OrderedDict[str, ssl.SSLContext] = OrderedDict()

    def _make(self, path: Path) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, f"hutch egress CA {secrets.token_hex(4)}")]
        )
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(days=1))
            .not_valid_after(_now() + datetime.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        fd, tmp = tempfile.mkstemp(dir=self.directory)  # 0600
        try:
            os.write(fd, _pem_key(key) + cert.public_bytes(serialization.Encoding.PEM))
            os.close(fd)
            # A link never replaces: whoever made the CA first, everyone uses theirs.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            os.unlink(tmp)

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server context presenting a leaf for ``host`` (blocking: signs on first use)."""
        ctx = self._leaves.get(host)
        if ctx is not None:
            self._leaves.move_to_end(host)
            return ctx
        key = ec.generate_private_key(ec.SECP256R1())
        ca_public = self._key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(_now() - datetime.timedelta(hours=1))
            .not_valid_after(_now() + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(self._key, hashes.SHA256())
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(_ALPN)  # the rewriter speaks HTTP/1 only
        fd, tmp = tempfile.mkstemp(dir=self.directory)  # load_cert_chain reads files only
        try:
            os.write(fd, _pem_key(key) + cert.public_bytes(serialization.Encoding.PEM))
            os.close(fd)
            ctx.load_cert_chain(tmp)
        finally:
            os.unlink(tmp)
        self._leaves[host] = ctx
        while len(self._leaves) > MAX_LEAVES:
            self._leaves.popitem(last=False)
        return ctx


def upstream_context() -> ssl.SSLContext:
    """How the proxy verifies the real server: the host's trust store, or the bundle named by
    ``HUTCH_EGRESS_CA_BUNDLE``."""
    ctx = ssl.create_default_context(cafile=os.environ.get(CA_BUNDLE_ENV) or None)
    ctx.set_alpn_protocols(_ALPN)
    return ctx


class TlsServerStream:
    """The server side of TLS over a connection whose first bytes (``head``: the ClientHello)
    were already read from ``reader``."""

    def __init__(
        self,
        ctx: ssl.SSLContext,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._in, self._out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self._obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self._in.write(head)

    async def _flush(self) -> None:
        data = self._out.read()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _fill(self) -> bool:
        await self._flush()
        data = await self._reader.read(CHUNK)
        if not data:
            self._in.write_eof()
            return False
        self._in.write(data)
        return True

    async def handshake(self) -> None:
        while True:
            try:
                self._obj.do_handshake()
            except ssl.SSLWantReadError:
                if not await self._fill():
                    raise ConnectionError("the sandbox left during the TLS handshake") from None
                continue
            await self._flush()
            return

    async def recv(self, n: int) -> bytes:
        """Up to ``n`` bytes of plaintext; b"" at the end (close_notify or not)."""
        while True:
            try:
                return self._obj.read(n)
            except ssl.SSLWantReadError:
                if not await self._fill():
                    with contextlib.suppress(ssl.SSLError):
                        return self._obj.read(n)
                    return b""
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def send(self, data: bytes) -> None:
        self._obj.write(data)
        await self._flush()
