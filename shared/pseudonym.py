"""PatientID as a keyed pseudonym: HMAC-SHA256 with a key only the site holds.

A plain hash of a PatientID is reversible by hashing every plausible ID (they are short and
structured); an HMAC is not without the key. The key comes from ``MAMMO_PATIENT_ID_KEY``
(``Settings.patient_id_key``) and has no default: with no key, patient-identified DICOM files
are refused rather than stored with an unkeyed or raw identifier. The raw value never leaves
this module's caller's stack frame: it is not logged, stored or put in a message.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from shared.config import KEY_HINT, Settings, short_patient_id_key
from shared.errors import ConfigurationError

# Hex characters kept: 128 bits, far beyond any collision risk within one site's patients,
# and short enough for the 64-character column and for reports.
_LENGTH = 32

__all__ = ["KEY_HINT", "Pseudonymizer"]


@dataclass(frozen=True, repr=False)
class Pseudonymizer:
    """Turns a PatientID into a stable pseudonym; the same key gives the same pseudonym."""

    key: bytes

    def __post_init__(self) -> None:
        if problem := short_patient_id_key(self.key):
            raise ConfigurationError(problem)

    @classmethod
    def from_settings(cls, settings: Settings) -> Pseudonymizer | None:
        """The configured pseudonymizer, or None when no key is set."""
        secret = settings.patient_id_key
        if secret is None or not secret.get_secret_value():
            return None
        return cls(secret.get_secret_value().encode("utf-8"))

    def __call__(self, patient_id: str) -> str:
        normalised = patient_id.strip().encode("utf-8")
        digest = hmac.new(self.key, normalised, hashlib.sha256).hexdigest()
        return f"p-{digest[:_LENGTH]}"

    def __repr__(self) -> str:  # never print the key
        return "Pseudonymizer(key=<hidden>)"
