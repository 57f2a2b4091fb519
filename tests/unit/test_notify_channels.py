"""Notification transports against real local servers: SMTP (plain, STARTTLS, SSL, login)
and a webhook receiver that checks the HMAC signature. Retry and backoff included."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from shared.config import Settings, load_settings
from shared.errors import ConfigurationError, NotificationError
from shared.notify.mail import EmailChannel
from shared.notify.message import Attachment, Event, Notice, delivery_key
from shared.notify.retry import RetryPolicy, deliver_with_retry
from shared.notify.webhook import WebhookChannel, encode_body, sign, verify_signature
from tests.helpers.notify_servers import HOST, free_port, smtp_server, webhook_server

PASSWORD = "smtp-pa55word-never-logged"
SECRET = "webhook-hmac-secret-value"


def _notice() -> Notice:
    return Notice(Event.BATCH_COMPLETE, "batch:1", "[mammo] Batch 1 complete",
                  "Batch 1 is complete.\nDecision support only, not a diagnosis.",
                  {"batch_id": 1, "failed": 0},
                  (Attachment("batch-1.html", "<html><body>summary</body></html>"),),
                  batch_id=1, delivery_key=delivery_key("batch", 1, "night", None))


def _mail_settings(port: int, **extra: object) -> Settings:
    return Settings(_env_file=None, smtp_host=HOST, smtp_port=port, smtp_from="mammo@example.org",  # type: ignore[call-arg]
                    smtp_to="reader@example.org, admin@example.org", **extra)


def test_plain_smtp_delivers_subject_body_and_html_attachment(tmp_path: Path) -> None:
    with smtp_server(tmp_path) as inbox:
        EmailChannel(_mail_settings(inbox.port, smtp_security="none")).send(_notice())
    [msg] = inbox.messages
    assert msg["Subject"] == "[mammo] Batch 1 complete"
    assert msg["To"] == "reader@example.org, admin@example.org"
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and "not a diagnosis" in body.get_content()
    [attachment] = list(msg.iter_attachments())
    assert attachment.get_filename() == "batch-1.html"
    assert attachment.get_content_type() == "text/html"
    assert "summary" in attachment.get_content()


@pytest.mark.parametrize("security", ["starttls", "ssl"])
def test_tls_with_login_and_a_verified_self_signed_certificate(tmp_path: Path,
                                                               security: str) -> None:
    with smtp_server(tmp_path, security=security, user="mammo", password=PASSWORD) as inbox:
        settings = _mail_settings(inbox.port, smtp_security=security, smtp_user="mammo",
                                  smtp_password=PASSWORD,
                                  smtp_ca_file=tmp_path / "smtp-cert.pem")
        EmailChannel(settings).send(_notice())
    assert inbox.logins == ["mammo"]
    assert len(inbox.messages) == 1


def test_an_untrusted_certificate_is_refused_not_retried(tmp_path: Path) -> None:
    with smtp_server(tmp_path, security="starttls", user="mammo", password=PASSWORD) as inbox:
        settings = _mail_settings(inbox.port, smtp_security="starttls", smtp_user="mammo",
                                  smtp_password=PASSWORD)  # no CA file: system trust store
        outcome = deliver_with_retry(lambda: EmailChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert not outcome.ok and outcome.attempts == 1
    assert "MAMMO_SMTP_CA_FILE" in (outcome.error or "")
    assert inbox.messages == []


def test_a_wrong_password_is_refused_without_retry_and_without_echo(tmp_path: Path) -> None:
    with smtp_server(tmp_path, security="ssl", user="mammo", password=PASSWORD) as inbox:
        settings = _mail_settings(inbox.port, smtp_security="ssl", smtp_user="mammo",
                                  smtp_password="wrong-guess-123",
                                  smtp_ca_file=tmp_path / "smtp-cert.pem")
        outcome = deliver_with_retry(lambda: EmailChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert not outcome.ok and outcome.attempts == 1
    assert "login refused" in (outcome.error or "")
    assert "wrong-guess-123" not in (outcome.error or "")
    assert inbox.messages == []


def test_webhook_body_is_signed_and_the_receiver_verifies_it() -> None:
    with webhook_server(SECRET) as inbox:
        settings = Settings(_env_file=None, webhook_url=inbox.url, webhook_secret=SECRET)  # type: ignore[call-arg]
        WebhookChannel(settings).send(_notice())
    [payload] = inbox.accepted
    assert payload["event"] == "batch_complete" and payload["batch_id"] == 1
    assert payload["delivery"] == f"batch_complete:{_notice().delivery_key}"
    assert inbox.refused == 0


def test_a_webhook_signed_with_another_secret_is_refused_and_not_retried() -> None:
    with webhook_server(SECRET) as inbox:
        settings = Settings(_env_file=None, webhook_url=inbox.url, webhook_secret="not-it")  # type: ignore[call-arg]
        outcome = deliver_with_retry(lambda: WebhookChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert inbox.accepted == [] and inbox.refused == 1
    assert not outcome.ok and outcome.attempts == 1 and "HTTP 401" in (outcome.error or "")
    assert "t0ken" not in (outcome.error or "")  # the URL's query string stays out


def test_signature_covers_the_timestamp_so_old_or_altered_bodies_fail() -> None:
    body = encode_body(_notice(), "d-1", sent_at=1_000_000)
    header = sign(SECRET.encode(), body)
    assert verify_signature(SECRET.encode(), body, header, now=1_000_010)
    assert not verify_signature(SECRET.encode(), body, header, now=1_000_000 + 3600)  # replay
    tampered = body.replace(b'"failed":0', b'"failed":9')
    assert not verify_signature(SECRET.encode(), tampered, header, now=1_000_010)


@pytest.mark.parametrize("channel", ["email", "webhook"])
def test_retries_with_backoff_until_the_server_comes_up(tmp_path: Path, channel: str) -> None:
    port = free_port()
    started = threading.Event()
    holder: dict[str, object] = {}

    def serve_later() -> None:
        server = (smtp_server(tmp_path, port=port) if channel == "email"
                  else webhook_server(SECRET, port=port))
        holder["inbox"] = server.__enter__()
        holder["server"] = server
        started.set()

    if channel == "email":
        sender = EmailChannel(_mail_settings(port, smtp_security="none"))
    else:
        url = f"http://{HOST}:{port}/hooks/mammo?token=t0ken"
        sender = WebhookChannel(Settings(_env_file=None, webhook_url=url,  # type: ignore[call-arg]
                                         webhook_secret=SECRET))
    pauses: list[float] = []

    def pause(seconds: float) -> None:
        pauses.append(seconds)
        if len(pauses) == 2:  # down for the first two attempts, then up
            serve_later()
            assert started.wait(10)

    outcome = deliver_with_retry(lambda: sender.send(_notice()), RetryPolicy(4, 0.2, 0.3),
                                 sleep=pause, rng=random.Random(1))
    try:
        assert outcome.ok and outcome.attempts == 3
        inbox = holder["inbox"]
        delivered = getattr(inbox, "messages", None) or getattr(inbox, "accepted", None)
        assert delivered is not None and len(delivered) == 1
    finally:
        holder["server"].__exit__(None, None, None)  # type: ignore[attr-defined]
    assert 0.1 <= pauses[0] <= 0.2 and 0.2 <= pauses[1] <= 0.3


def test_gives_up_after_the_configured_retries() -> None:
    port = free_port()  # nothing listens there
    sender = WebhookChannel(Settings(_env_file=None, webhook_url=f"http://{HOST}:{port}/",  # type: ignore[call-arg]
                                     webhook_secret=SECRET, notify_timeout_s=1))
    pauses: list[float] = []
    outcome = deliver_with_retry(lambda: sender.send(_notice()), RetryPolicy(3, 1.0, 2.5),
                                 sleep=pauses.append, rng=random.Random(2))
    assert not outcome.ok and outcome.attempts == 4
    assert "unreachable" in (outcome.error or "")
    assert len(pauses) == 3 and all(p <= 2.5 for p in pauses)
    assert 1.0 <= pauses[1] <= 2.0 and pauses[2] >= 1.25  # doubling, jittered, capped


def test_backoff_never_exceeds_the_cap() -> None:
    delays = list(RetryPolicy(10, 1.0, 8.0).delays(random.Random(3)))
    assert len(delays) == 10 and max(delays) <= 8.0 and min(delays) >= 0.5


@pytest.mark.parametrize("settings", [
    {"smtp_host": "mail", "smtp_to": "a@b"},  # no sender
    {"smtp_host": "mail", "smtp_from": "a@b"},  # no recipients
    {"smtp_host": "mail", "smtp_from": "a@b", "smtp_to": "c@d", "smtp_user": "u"},
    {"smtp_host": "mail", "smtp_from": "a@b", "smtp_to": "c@d", "smtp_user": "u",
     "smtp_password": PASSWORD, "smtp_security": "none"},
    {"webhook_url": "https://hooks.example.org/x"},  # unsigned webhooks are refused
    {"webhook_url": "file:///etc/passwd", "webhook_secret": SECRET},
])
def test_half_a_notification_configuration_is_refused_without_echoing_secrets(
    settings: dict[str, str],
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        load_settings(_env_file=None, **settings)
    assert PASSWORD not in str(raised.value) and SECRET not in str(raised.value)


def test_a_missing_smtp_ca_file_is_refused_at_start_naming_the_setting(tmp_path: Path) -> None:
    # Not at night, as "unreachable: FileNotFoundError", four times over.
    with pytest.raises(ConfigurationError, match=r"MAMMO_SMTP_CA_FILE=.*nope\.pem is not a file"):
        load_settings(_env_file=None, smtp_host="mail", smtp_from="a@b", smtp_to="c@d",
                      smtp_ca_file=str(tmp_path / "nope.pem"))


def test_secrets_do_not_appear_in_the_settings_repr() -> None:
    settings = Settings(_env_file=None, smtp_host=HOST, smtp_from="a@b", smtp_to="c@d",  # type: ignore[call-arg]
                        smtp_user="u", smtp_password=PASSWORD, webhook_url="https://h/x",
                        webhook_secret=SECRET)
    assert PASSWORD not in repr(settings) and SECRET not in repr(settings)
    assert PASSWORD not in str(settings.model_dump()) and SECRET not in str(settings.model_dump())


def test_notification_error_is_the_retryable_family() -> None:
    from shared.errors import MammoError, NotificationRejectedError

    assert issubclass(NotificationRejectedError, NotificationError)
    assert issubclass(NotificationError, MammoError)


def test_notification_secrets_never_reach_help_or_error_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    from click.testing import CliRunner

    from producer.cli.main import cli

    for key in [k for k in os.environ if k.startswith("MAMMO_")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAMMO_SMTP_PASSWORD", PASSWORD)
    monkeypatch.setenv("MAMMO_WEBHOOK_SECRET", SECRET)
    runner = CliRunner()
    texts = [runner.invoke(cli, [*cmd, "--help"]).output
             for cmd in ([], ["run"], ["submit"], ["worker"], ["status"], ["watch"])]
    # An invalid combination, so that the settings error path prints too.
    monkeypatch.setenv("MAMMO_SMTP_USER", "mammo")
    monkeypatch.setenv("MAMMO_SMTP_SECURITY", "none")
    failed = runner.invoke(cli, ["status", "--format", "json"])
    assert failed.exit_code == 4, failed.output  # invalid configuration
    assert "MAMMO_SMTP_SECURITY=none" in failed.output
    for text in [*texts, failed.output]:
        assert PASSWORD not in text and SECRET not in text


@contextmanager
def _odd_receiver(mode: str) -> Iterator[tuple[str, list[tuple[str, bytes]]]]:
    """A receiver that misbehaves: ``redirect`` answers a POST with 302 (and takes anything
    at the new place); ``trickle`` sends 200 headers, then its body one byte a second."""
    seen: list[tuple[str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_GET(self) -> None:
            seen.append(("GET " + self.path, b""))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self) -> None:
            seen.append(("POST " + self.path, self._body()))
            if mode == "redirect" and self.path.startswith("/hooks"):
                self.send_response(302)
                self.send_header("Location", "/elsewhere?token=t0ken")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if mode == "trickle":
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n")
                for _ in range(30):
                    try:
                        self.wfile.write(b"x")
                        self.wfile.flush()
                    except OSError:
                        return
                    time.sleep(1)
                return
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer((HOST, 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{HOST}:{server.server_address[1]}/hooks/mammo?token=t0ken", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_redirecting_webhook_is_refused_not_followed_and_not_retried() -> None:
    # urllib followed a 302 as a GET without the body: the receiver never got the payload,
    # yet the delivery was recorded sent.
    with _odd_receiver("redirect") as (url, seen):
        settings = Settings(_env_file=None, webhook_url=url, webhook_secret=SECRET)  # type: ignore[call-arg]
        outcome = deliver_with_retry(lambda: WebhookChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert [what for what, _ in seen] == ["POST /hooks/mammo?token=t0ken"]
    assert not outcome.ok and outcome.attempts == 1
    assert f"redirected to http://{HOST}:" in (outcome.error or "")
    assert "/elsewhere" in (outcome.error or "") and "MAMMO_WEBHOOK_URL" in (outcome.error or "")
    assert "t0ken" not in (outcome.error or "")


def test_a_trickling_webhook_is_cut_at_the_timeout_per_attempt_not_per_read() -> None:
    # urlopen's timeout limits each socket read: one byte a second held the sender for the
    # whole 30 s body, so "at most timeout x attempts + backoff" did not hold.
    with _odd_receiver("trickle") as (url, seen):
        settings = Settings(_env_file=None, webhook_url=url, webhook_secret=SECRET,  # type: ignore[call-arg]
                            notify_timeout_s=1.5)
        started = time.monotonic()
        outcome = deliver_with_retry(lambda: WebhookChannel(settings).send(_notice()),
                                     RetryPolicy(1, 0.01, 0.01))
        elapsed = time.monotonic() - started
    assert len(seen) == 2 and not outcome.ok and outcome.attempts == 2
    assert "did not answer within 1.5 s" in (outcome.error or "")
    assert elapsed < 2 * 1.5 + 1.0


def test_tls_to_a_plain_smtp_port_names_the_security_setting_not_unreachable(
    tmp_path: Path,
) -> None:
    with smtp_server(tmp_path) as inbox:  # plain SMTP
        settings = _mail_settings(inbox.port, smtp_security="ssl")
        outcome = deliver_with_retry(lambda: EmailChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert not outcome.ok and outcome.attempts == 1  # a setting: asking again will not help
    assert "WRONG_VERSION_NUMBER" in (outcome.error or "")
    assert "MAMMO_SMTP_SECURITY" in (outcome.error or "")
    assert "unreachable" not in (outcome.error or "")


def test_https_to_a_plain_http_webhook_names_the_url_scheme_not_unreachable() -> None:
    with webhook_server(SECRET) as inbox:
        url = inbox.url.replace("http://", "https://")
        settings = Settings(_env_file=None, webhook_url=url, webhook_secret=SECRET)  # type: ignore[call-arg]
        outcome = deliver_with_retry(lambda: WebhookChannel(settings).send(_notice()),
                                     RetryPolicy(3, 0.01, 0.01))
    assert not outcome.ok and outcome.attempts == 1
    assert "URL scheme" in (outcome.error or "") and "unreachable" not in (outcome.error or "")
    assert "t0ken" not in (outcome.error or "")


def test_a_handed_off_delivery_starts_only_if_it_can_end_before_a_takeover() -> None:
    # The settings allow one delivery to last an hour; a row still pending under a live
    # sender's claim after STALE_AFTER is taken over by another process and sent twice.
    from shared.notify.dispatch import MAX_QUEUE_WAIT, queue_wait_limit_s
    from shared.notify.records import STALE_AFTER

    default = RetryPolicy(retries=3, base_s=1.0, cap_s=60.0)
    assert queue_wait_limit_s(default, 5.0) == MAX_QUEUE_WAIT.total_seconds()
    slow = RetryPolicy(retries=8, base_s=1.0, cap_s=300.0)  # 795 s a delivery at worst
    limit = queue_wait_limit_s(slow, 60.0)
    assert 0 < limit < MAX_QUEUE_WAIT.total_seconds()
    assert limit + slow.longest_s(60.0) <= STALE_AFTER.total_seconds()
    assert queue_wait_limit_s(RetryPolicy(retries=10, base_s=60.0, cap_s=300.0), 60.0) == 0.0
