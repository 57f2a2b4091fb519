"""Real local receivers for notification tests: an SMTP server (aiosmtpd) with optional
STARTTLS/SSL and login, a self-signed certificate made on the spot, and an HTTP server that
checks webhook signatures the way a receiver should."""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from shared.notify.webhook import SIGNATURE_HEADER, verify_signature

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1/localhost and its key (PEM); the cert is its own CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mammo test SMTP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "smtp-cert.pem", directory / "smtp-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class SmtpInbox:
    port: int
    messages: list[EmailMessage] = field(default_factory=list)
    raw: list[bytes] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.raw.append(bytes(envelope.original_content or envelope.content))
        self.messages.append(email.message_from_bytes(
            self.raw[-1], policy=email.policy.default))  # type: ignore[arg-type]
        return "250 OK"


@contextmanager
def smtp_server(directory: Path, *, security: str = "none", user: str | None = None,
                password: str | None = None, port: int | None = None) -> Iterator[SmtpInbox]:
    """A real SMTP server on 127.0.0.1; ``security`` is none, starttls or ssl."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    inbox = SmtpInbox(port or free_port())
    kwargs: dict[str, Any] = {}
    if security != "none":
        cert, key = self_signed_certificate(directory)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        kwargs["ssl_context" if security == "ssl" else "tls_context"] = context
        if security == "starttls":
            kwargs["require_starttls"] = True
    if user is not None:
        def authenticate(server: Any, session: Any, envelope: Any, mechanism: str,
                         auth_data: Any) -> AuthResult:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login == user.encode()
                  and auth_data.password == (password or "").encode())
            if ok:
                inbox.logins.append(user)
            return AuthResult(success=ok, handled=False)  # False: the server answers 535

        kwargs.update(authenticator=authenticate, auth_required=True,
                      # aiosmtpd does not count implicit TLS (SMTPS) as TLS for AUTH.
                      auth_require_tls=security != "ssl")
    class QuietController(Controller):
        def factory(self) -> Any:
            # aiosmtpd warns "AUTH without TLS" for SMTPS, where the socket is TLS already.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                return super().factory()

    controller = QuietController(inbox, hostname=HOST, port=inbox.port, **kwargs)
    controller.start()
    try:
        yield inbox
    finally:
        controller.stop()


@dataclass
class WebhookInbox:
    url: str
    secret: bytes
    accepted: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    refused: int = 0


@contextmanager
def webhook_server(secret: str, *, port: int | None = None,
                   hold: threading.Event | None = None) -> Iterator[WebhookInbox]:
    """An HTTP receiver that answers 204 only to a correctly signed, recent body (else 401);
    with ``hold``, a hanging one: it reads each request, then answers once ``hold`` is set."""
    port = port or free_port()
    inbox = WebhookInbox(f"http://{HOST}:{port}/hooks/mammo?token=t0ken", secret.encode())

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            inbox.bodies.append(body)
            if hold is not None:
                hold.wait(120)
            if verify_signature(inbox.secret, body, self.headers.get(SIGNATURE_HEADER)):
                inbox.accepted.append(json.loads(body))
                self.send_response(204)
            else:
                inbox.refused += 1
                self.send_response(401)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return

    server = ThreadingHTTPServer((HOST, port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield inbox
    finally:
        server.shutdown()
        server.server_close()
