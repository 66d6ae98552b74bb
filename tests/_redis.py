"""A private Redis database for tests that run real servers (worker, daphne) against Redis."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis


def private_redis_url(db: int) -> str:
    """REDIS_URL (or the local default) switched to database ``db``, emptied; skip if unreachable."""
    base = urlsplit(os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0")
    url = urlunsplit(base._replace(path=f"/{db}"))
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"needs a Redis server at {base.netloc} (set REDIS_URL): {exc}")
    client.flushdb()
    return url
