"""Offline without waiting: switch the Hugging Face libraries to offline mode when the hub cannot be reached.

Without `HF_HUB_OFFLINE`, a hub lookup on a machine with no network retries for about 25 s (five attempts)
before failing; the one-line error that follows is the same either way. A process that runs lm-eval calls
`offline_if_hub_unreachable()` once: if the user has not chosen (no `HF_HUB_OFFLINE` in the environment) and
the hub's host does not resolve or accept a connection within `timeout` seconds, the process goes offline,
so a missing local file fails at once with its own message (for our tasks: set SPARSE_BENCH_DATA_DIR).
"""

from __future__ import annotations

import os
import socket
import sys

HUB_HOST = "huggingface.co"
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_reachable(host: str = HUB_HOST, timeout: float = 2.0) -> bool:
    """True if `host`:443 resolves and accepts a TCP connection within `timeout` seconds."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def go_offline() -> None:
    """Offline mode for this process, including libraries that already read their settings at import."""
    for name in OFFLINE_VARIABLES:
        os.environ[name] = "1"
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    datasets_config = sys.modules.get("datasets.config")
    if datasets_config is not None:
        datasets_config.HF_HUB_OFFLINE = True
        datasets_config.HF_DATASETS_OFFLINE = True


def offline_if_hub_unreachable(host: str = HUB_HOST, timeout: float = 2.0) -> bool:
    """Go offline when the user left HF_HUB_OFFLINE unset and the hub is unreachable; True if it did."""
    if "HF_HUB_OFFLINE" in os.environ or hub_reachable(host, timeout):
        return False
    go_offline()
    return True


__all__ = ["HUB_HOST", "hub_reachable", "go_offline", "offline_if_hub_unreachable"]
