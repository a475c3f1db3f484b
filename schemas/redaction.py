"""The one redaction: what never leaves the process in clear (registry records, error messages, events).

A value is hidden when its key looks secret (``api_key``, ``password``, ``token``...) or when the
value itself looks like a credential, whatever its key: free-text fields such as a mode's
``description`` end up holding pasted keys too. Value shapes: well-known key prefixes (``sk-``,
``sk_live_``, ``AKIA``, ``ghp_``, ``xox?-``), PEM blocks, JWTs, URLs with a password, and long
high-entropy tokens.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

__all__ = ["MASK", "looks_secret_key", "looks_secret_value", "redact", "redact_text"]

MASK = "***"

# Not a bare "token": "staking_token" and "dust_tracking_tokens" name assets in every mode file.
_SECRET_KEY = re.compile(
    r"secret|passw(or)?d|passphrase|api[_-]?key|private[_-]?key|credential|access[_-]?key|session[_-]?key|"
    r"(?:auth|access|bearer|refresh|api|session|id)[_-]?token|authorization|seed[_-]?phrase|mnemonic",
    re.IGNORECASE)
_SECRET_VALUE = re.compile(
    r"\b(?:sk|pk|rk)[-_](?:live|test|prod)?[-_]?[A-Za-z0-9]{3,}"     # Stripe/OpenAI-style keys
    r"|\bAKIA[0-9A-Z]{12,}"                                           # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"                                  # GitHub tokens
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"                                # Slack tokens
    r"|-----BEGIN [A-Z ]*PRIVATE KEY-----"                            # PEM private keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|://[^/\s:@]+:[^@\s/]+@"                                        # user:password@ in a URL
)
_TOKEN = re.compile(r"[A-Za-z0-9+/_=-]{32,}")


def looks_secret_key(key: str) -> bool:
    """Whether a key name says its value is a secret."""
    return bool(_SECRET_KEY.search(key))


def _entropy(token: str) -> float:
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def looks_secret_value(value: str) -> bool:
    """Whether a string holds something shaped like a credential."""
    if _SECRET_VALUE.search(value):
        return True
    # Long random-looking tokens (hex digests are 4 bits/char; base64 keys about 5-6).
    return any(_entropy(t) > 4.2 for t in _TOKEN.findall(value))


def redact_text(text: str) -> str:
    """``text`` with every credential-shaped part replaced by the mask."""
    text = _SECRET_VALUE.sub(MASK, text)
    return _TOKEN.sub(lambda m: MASK if _entropy(m.group()) > 4.2 else m.group(), text)


def redact(value: Any) -> Any:
    """A copy of plain data (dicts, lists, scalars) with secret keys' values and secret-shaped strings masked."""
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and looks_secret_key(k) and value[k] not in (None, "", [], {})
                else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str) and looks_secret_value(value):
        return redact_text(value)
    return value
