"""Process-wide logging set-up shared by the daemons (controller, agent, instance)."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(name)s %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format=FORMAT)
    # httpx logs every request at INFO: a llumlet reports ten times a second.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
    # asyncio warns once per write to a socket a streaming client already closed
    # ("socket.send() raised exception."), hundreds of lines for one disconnect.
    logging.getLogger("asyncio").setLevel(logging.ERROR)
