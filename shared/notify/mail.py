"""E-mail over SMTP: STARTTLS or implicit TLS with a verifying context, login from settings."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from shared.config import Settings
from shared.errors import NotificationError, NotificationRejectedError
from shared.notify.message import Notice

# What an OpenSSL client reports when the other side does not answer with TLS (a plain
# port, plain HTTP) or answers TLS where plain text was expected: a setting, not an outage.
TLS_MISMATCH = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL", "HTTP_REQUEST",
                          "RECORD_LAYER_FAILURE", "PACKET_LENGTH_TOO_LONG"})


def build_email(settings: Settings, notice: Notice) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.smtp_from or ""
    msg["To"] = ", ".join(settings.smtp_to)
    msg["Subject"] = notice.subject
    msg["Date"] = formatdate(localtime=False)
    msg["Message-ID"] = make_msgid(domain="mammo-pipeline")
    msg.set_content(notice.text)
    for item in notice.attachments:
        msg.add_attachment(item.content, subtype=item.subtype, filename=item.filename)
    return msg


def tls_context(settings: Settings) -> ssl.SSLContext:
    """Certificate and host name always verified; an own CA only through MAMMO_SMTP_CA_FILE."""
    cafile = str(settings.smtp_ca_file) if settings.smtp_ca_file else None
    return ssl.create_default_context(cafile=cafile)


class EmailChannel:
    name = "email"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def send(self, notice: Notice) -> None:
        message = build_email(self.settings, notice)
        try:
            with self._connect() as smtp:
                if self.settings.smtp_user and self.settings.smtp_password is not None:
                    smtp.login(self.settings.smtp_user,
                               self.settings.smtp_password.get_secret_value())
                smtp.send_message(message)
        except smtplib.SMTPAuthenticationError as exc:
            raise NotificationRejectedError(
                f"SMTP login refused by {self._where()} ({exc.smtp_code}): check "
                "MAMMO_SMTP_USER and MAMMO_SMTP_PASSWORD") from None
        except smtplib.SMTPNotSupportedError as exc:
            raise NotificationRejectedError(
                f"SMTP server {self._where()} does not offer what the settings ask for ({exc}): "
                "check MAMMO_SMTP_SECURITY and MAMMO_SMTP_USER") from None
        except smtplib.SMTPRecipientsRefused:
            raise NotificationRejectedError(
                f"SMTP server {self._where()} refused every recipient in MAMMO_SMTP_TO") from None
        except ssl.SSLCertVerificationError as exc:
            raise NotificationRejectedError(
                f"TLS certificate of {self._where()} not trusted ({exc.verify_message}): set "
                "MAMMO_SMTP_CA_FILE to the CA that signed it") from None
        except ssl.SSLError as exc:
            if exc.reason not in TLS_MISMATCH:
                raise NotificationError(
                    f"SMTP server {self._where()} unreachable: TLS error: {exc}") from None
            raise NotificationRejectedError(
                f"SMTP server {self._where()} does not speak TLS the way the settings ask "
                f"({exc.reason}): check MAMMO_SMTP_SECURITY ({self.settings.smtp_security}) "
                "and MAMMO_SMTP_PORT (ssl: 465, starttls: 587)") from None
        except smtplib.SMTPResponseException as exc:
            error = NotificationRejectedError if 500 <= exc.smtp_code < 600 else NotificationError
            raise error(f"SMTP server {self._where()} answered {exc.smtp_code}") from None
        except (smtplib.SMTPException, OSError) as exc:
            raise NotificationError(
                f"SMTP server {self._where()} unreachable: {type(exc).__name__}: {exc}") from None

    def _where(self) -> str:
        return f"{self.settings.smtp_host}:{self.settings.smtp_port}"

    def _connect(self) -> smtplib.SMTP:
        s = self.settings
        host, timeout = s.smtp_host or "", s.notify_timeout_s
        if s.smtp_security == "ssl":
            return smtplib.SMTP_SSL(host, s.smtp_port, timeout=timeout, context=tls_context(s))
        smtp = smtplib.SMTP(host, s.smtp_port, timeout=timeout)
        try:
            if s.smtp_security == "starttls":
                smtp.starttls(context=tls_context(s))
        except BaseException:
            smtp.close()
            raise
        return smtp
