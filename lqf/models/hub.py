"""Whether a model hub answers, asked once and quickly, so that offline runs fail at once.

Without a network the Hugging Face hub client retries for about a minute before it gives up.
:func:`reachable` asks for a TCP connection with a short timeout instead; when the hub does not
answer, timm's weights are looked up in the local cache only (``HF_HUB_OFFLINE``), and a
torchvision download that is not cached is refused before it starts.
"""

from __future__ import annotations

import functools
import os
import socket

#: seconds to wait for a hub to accept a connection
TIMEOUT = 3.0


@functools.cache
def reachable(host: str, port: int = 443, timeout: float = TIMEOUT) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` seconds (asked once)."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def hf_offline_unless_reachable() -> str | None:
    """Switch the Hugging Face hub client to its local cache when the hub does not answer;
    returns why it is offline (``None``: it is online)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set and they are not cached"
    if reachable("huggingface.co"):
        return None
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:  # read at import: set the imported module's flag as well
        import huggingface_hub.constants as constants

        constants.HF_HUB_OFFLINE = True
    except ImportError:
        pass
    return "the hub does not answer and they are not cached"


def torchvision_cached_or_reachable(url: str) -> bool:
    """Whether the torchvision weights at ``url`` are in torch's hub cache or can be downloaded."""
    import torch.hub

    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url))
    if os.path.isfile(cached):
        return True
    host = url.split("//", 1)[-1].split("/", 1)[0]
    return reachable(host)
