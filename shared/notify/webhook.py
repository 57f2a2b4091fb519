"""Webhook: a JSON POST whose raw body is signed with HMAC-SHA256.

Header ``X-Mammo-Signature: sha256=<hex>`` is the HMAC of the exact body bytes under
MAMMO_WEBHOOK_SECRET. The body carries ``sent_at`` (Unix seconds) and a ``delivery`` id, both
covered by the signature, so a receiver can refuse replays: reject a body older than a few
minutes or a delivery id it has seen (``verify_signature`` below does the first part).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urljoin, urlsplit

from shared.config import Settings
from shared.errors import NotificationError, NotificationRejectedError
from shared.notify.mail import TLS_MISMATCH
from shared.notify.message import Notice

SIGNATURE_HEADER = "X-Mammo-Signature"
TIMESTAMP_HEADER = "X-Mammo-Timestamp"
_RETRYABLE_STATUS = {408, 425, 429}
_READ_CHUNK = 1024


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Never follow a redirect: urllib would repeat a POST as a GET without its body, so the
    receiver would never get the payload while the delivery looked sent."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(_NoRedirect)


def sign(secret: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify_signature(secret: bytes, body: bytes, header: str | None, *,
                     max_age_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver checks: the signature matches and the body is recent."""
    if not header or not hmac.compare_digest(sign(secret, body), header):
        return False
    try:
        sent_at = float(json.loads(body)["sent_at"])
    except (ValueError, KeyError, TypeError):
        return False
    return abs((time.time() if now is None else now) - sent_at) <= max_age_s


def encode_body(notice: Notice, delivery: str, sent_at: int) -> bytes:
    body: dict[str, Any] = {"event": notice.event.value, "delivery": delivery,
                            "sent_at": sent_at, **notice.payload}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()


class WebhookChannel:
    name = "webhook"

    def __init__(self, settings: Settings) -> None:
        if not settings.webhook_url or settings.webhook_secret is None:
            raise ValueError("webhook channel needs MAMMO_WEBHOOK_URL and MAMMO_WEBHOOK_SECRET")
        self.url = settings.webhook_url
        self.secret = settings.webhook_secret.get_secret_value().encode()
        self.timeout_s = settings.notify_timeout_s

    def send(self, notice: Notice) -> None:
        sent_at = int(time.time())
        body = encode_body(notice, notice.delivery_id, sent_at)
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": "mammo-pipeline",
            SIGNATURE_HEADER: sign(self.secret, body), TIMESTAMP_HEADER: str(sent_at),
        })
        try:
            self._post(request)
        except urllib.error.HTTPError as exc:
            if 300 <= exc.code < 400:
                location = self._where(exc.headers.get("Location") or "?")
                raise NotificationRejectedError(
                    f"webhook at {self._where()} redirected to {location} (HTTP {exc.code}): "
                    "set MAMMO_WEBHOOK_URL to the final URL") from None
            error = (NotificationError if exc.code >= 500 or exc.code in _RETRYABLE_STATUS
                     else NotificationRejectedError)
            raise error(f"webhook {self._where()} answered HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLError) and reason.reason in TLS_MISMATCH:
                raise NotificationRejectedError(
                    f"webhook {self._where()} does not speak TLS the way the URL asks "
                    f"({reason.reason}): check the URL scheme (https/http) and port of "
                    "MAMMO_WEBHOOK_URL") from None
            raise NotificationError(f"webhook {self._where()} unreachable: {reason}") from None

    def _post(self, request: urllib.request.Request) -> None:
        """The request with an overall deadline of MAMMO_NOTIFY_TIMEOUT_S.

        urlopen's ``timeout`` bounds each socket operation, not the request: a receiver that
        trickles its answer a byte at a time held the sender for minutes. The request runs in
        a helper thread that stops reading once the deadline has passed (each of its reads
        still times out on its own), and the caller waits for it at most until the deadline.
        """
        late = threading.Event()
        outcome: list[BaseException | None] = []

        def run() -> None:
            try:
                # The URL is http(s) only: Settings refuses file:// and other schemes.
                with _OPENER.open(request, timeout=self.timeout_s) as response:
                    while not late.is_set() and response.read(_READ_CHUNK):
                        pass
                outcome.append(None)
            except BaseException as exc:  # handed to the caller below
                outcome.append(exc)

        thread = threading.Thread(target=run, name="mammo-webhook-post", daemon=True)
        thread.start()
        thread.join(self.timeout_s)
        late.set()
        if not outcome:
            raise NotificationError(f"webhook {self._where()} did not answer within "
                                    f"{self.timeout_s:g} s (MAMMO_NOTIFY_TIMEOUT_S)")
        if outcome[0] is not None:
            raise outcome[0]

    def _where(self, url: str | None = None) -> str:
        # Scheme, host and port (and, for a redirect target, the path) only: a token in the
        # query or the user info must not reach the logs.
        parts = urlsplit(urljoin(self.url, url) if url else self.url)
        path = parts.path if url else ""
        return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}{path}"
