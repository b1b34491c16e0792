"""Reaching the Hugging Face hub: a quick reachability probe and the tutorial's mirror fallback.

Without this probe, `datasets` / `transformers` retry for minutes on a machine with no
network before failing with a long traceback; the probe answers in `timeout_s` seconds and
the error says how to use the embedded default instead.
"""
from __future__ import annotations

import logging
import os
import urllib.error
import urllib.request

from meddialog.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubUnreachable(UserError):
    pass


def select_endpoint(what: str, mirror: str, timeout_s: float, offline_hint: str) -> str:
    """Return a reachable hub endpoint (the configured one, else the mirror) and export it.

    HF_ENDPOINT is exported before `datasets` / `huggingface_hub` are imported by the caller,
    because huggingface_hub reads it once, at import time.
    """
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise HubUnreachable(f"{what} needs the Hugging Face hub but HF_HUB_OFFLINE is set; {offline_hint}")
    primary = os.environ.get("HF_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")
    candidates = [primary] + ([mirror.rstrip("/")] if mirror and mirror.rstrip("/") != primary else [])
    failures = []
    for endpoint in candidates:
        reason = _probe(endpoint, timeout_s)
        if reason is None:
            if endpoint != primary:
                log.warning("%s unreachable; using the mirror %s", primary, endpoint)
            os.environ["HF_ENDPOINT"] = endpoint
            return endpoint
        failures.append(f"{endpoint}: {reason}")
    raise HubUnreachable(f"cannot reach the Hugging Face hub for {what} ({'; '.join(failures)}); {offline_hint}")


def _probe(endpoint: str, timeout_s: float) -> str | None:
    """None when the endpoint answers at all (any HTTP status), else why not."""
    try:
        urllib.request.urlopen(urllib.request.Request(endpoint + "/api/status", method="HEAD"), timeout=timeout_s)
    except urllib.error.HTTPError:
        return None  # it answered; authentication and missing repos are reported by the real call
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    return None
