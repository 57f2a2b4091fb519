"""Connection URLs as they may be shown to a person: every password masked.

Database and broker URLs appear in error messages and logs. A password can sit in two places:
the userinfo (``scheme://user:PASSWORD@host``) and the query string (``?password=...``,
which libpq and redis-py both read). SQLAlchemy's and kombu's own renderers mask only the
first, so every URL this project shows goes through :func:`redact_url`.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

MASK = "***"

# Userinfo: the password runs to the last "@" before the query, so an unescaped "@" in a
# password is masked too (over-masking a display string is harmless; leaking is not).
_USERINFO_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][\w+.\-]*://[^:/@?#]*:)[^?#]*@")
_QUERY_SECRET = re.compile(
    r"(?P<key>[?&;](?:password|passwd|pwd|pass|sslpassword|secret|token|api_key)=)[^&;#]*",
    re.IGNORECASE,
)


def redact_url(url: str) -> str:
    """``url`` with the userinfo password and any password-like query values masked."""
    shown = _USERINFO_PASSWORD.sub(lambda m: f"{m['head']}{MASK}@", url, count=1)
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}{MASK}", shown)


def redact_endpoint(url: str) -> str:
    """``url`` as scheme, host and port only, for a URL whose path is itself a credential:
    Slack, Teams and Discord webhooks carry their token in the path, not as a password."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    rest = parts.path.strip("/") or parts.query
    return f"{parts.scheme}://{host}" + (f"/{MASK}" if rest else "")
