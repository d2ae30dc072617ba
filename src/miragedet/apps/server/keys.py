"""API keys and their quotas: named keys from a file (hashed in memory, compared in constant
time, reloaded on SIGHUP), a request rate and a daily image quota per key (the ``limits``
library's in-memory windows).

The keys file holds one key per line: ``NAME KEY [RATE] [DAILY_IMAGES]``, e.g.
``newsroom  3f9c...  60/minute  20000``; ``#`` starts a comment. RATE is in the ``limits``
notation ("60/minute", "5/second"; https://limits.readthedocs.io/en/stable/quickstart.html
#rate-limit-string-notation) and DAILY_IMAGES a count; either may be ``-`` for the server's
default (``--rate-limit``, ``--daily-images``). Only the key's name is ever logged or shown in
``/metrics``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

from limits import RateLimitItem, parse
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

log = logging.getLogger("miragedet.server")


def digest(key: str) -> bytes:
    """What is kept of a key in memory: its SHA-256."""
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class Key:
    name: str
    hashed: bytes
    rate: RateLimitItem | None = None  # requests, a moving window
    daily: RateLimitItem | None = None  # images per day, a fixed window from the first use


def _rate(text: str | None) -> RateLimitItem | None:
    if not text or text == "-":
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ValueError(f"rate {text!r}: expected e.g. 60/minute ({exc})") from exc


def _daily(images: int | None) -> RateLimitItem | None:
    return None if images is None else parse(f"{images}/day")


def _count(text: str | None) -> int | None:
    if not text or text == "-":
        return None
    if not text.isdigit():
        raise ValueError(f"daily image quota {text!r}: expected a whole number")
    return int(text)


def read_keys(path: Path, rate: str | None = None, daily_images: int | None = None) -> list[Key]:
    """The keys of ``path`` (a line's own rate/quota, else the defaults given here)."""
    keys: list[Key] = []
    names: set[str] = set()
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) < 2 or len(fields) > 4:
            raise ValueError(f"{path}:{number}: expected NAME KEY [RATE] [DAILY_IMAGES]")
        name, key, *extra = fields
        if name in names:
            raise ValueError(f"{path}:{number}: the name {name!r} is used twice")
        names.add(name)
        try:
            own_rate = _rate(extra[0]) if extra else None
            own_daily = _count(extra[1]) if len(extra) > 1 else None
        except ValueError as exc:
            raise ValueError(f"{path}:{number}: {exc}") from exc
        keys.append(
            Key(
                name,
                digest(key),
                own_rate or _rate(rate),
                _daily(own_daily if own_daily is not None else daily_images),
            )
        )
    return keys


@dataclass(frozen=True)
class Refusal:
    reason: str  # "rate_limited" | "quota_exceeded"
    detail: str
    retry_after: int  # seconds


class KeyRing:
    """The keys a server accepts. ``check`` finds the key's name by comparing SHA-256 digests
    with :func:`hmac.compare_digest`, over every key (no early exit); ``reload`` swaps in the
    file's current keys at once (requests in flight keep the set they started with)."""

    def __init__(
        self,
        path: Path | None = None,
        single: str | None = None,
        rate: str | None = None,
        daily_images: int | None = None,
    ) -> None:
        self.path, self.single, self.rate, self.daily_images = path, single, rate, daily_images
        self.keys: tuple[Key, ...] = ()
        storage = MemoryStorage()
        self._rates = MovingWindowRateLimiter(storage)
        self._daily = FixedWindowRateLimiter(storage)
        self.reload()

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.path is not None or bool(self.single)

    def reload(self) -> int:
        """Read the keys file again; on a bad file the keys in use stay (and it is logged)."""
        keys: list[Key] = []
        if self.single:
            daily = _daily(self.daily_images)
            keys.append(Key("default", digest(self.single), _rate(self.rate), daily))
        if self.path is not None:
            try:
                keys.extend(read_keys(self.path, self.rate, self.daily_images))
            except (OSError, ValueError) as exc:
                if self.keys:
                    log.error("miragedet: keys not reloaded, the old ones stay: %s", exc)
                    return len(self.keys)
                raise
        self.keys = tuple(keys)  # one assignment: a request sees the old set or the new one
        log.info("miragedet: %d API key(s) loaded", len(keys))
        return len(keys)

    def check(self, given: str | None) -> str | None:
        """The name of the key ``given``, or None."""
        if given is None:
            return None
        hashed = digest(given)
        found = None
        for key in self.keys:  # every key is compared, whichever matches
            if hmac.compare_digest(hashed, key.hashed):
                found = key.name
        return found

    def _key(self, name: str) -> Key | None:
        return next((k for k in self.keys if k.name == name), None)

    def admit(self, name: str, images: int) -> Refusal | None:
        """Count one request of ``images`` images against the key's rate and daily quota, or
        say why not (nothing is counted for a refused request)."""
        key = self._key(name)
        if key is None:
            return None
        now = time.time()
        if key.rate is not None and not self._rates.test(key.rate, name):
            reset = self._rates.get_window_stats(key.rate, name).reset_time
            return Refusal(
                "rate_limited",
                f"rate limit of {key.rate} reached for key {name!r}",
                max(1, math.ceil(reset - now)),
            )
        quota = key.daily
        if quota is not None:
            if images > quota.amount or not self._daily.test(quota, name, cost=images):
                stats = self._daily.get_window_stats(quota, name)
                retry = max(1, math.ceil(stats.reset_time - now))
                return Refusal(
                    "quota_exceeded",
                    f"daily quota of {quota.amount} images for key {name!r}: "
                    f"{stats.remaining} left, {images} sent",
                    retry,
                )
            self._daily.hit(quota, name, cost=images)
        if key.rate is not None:
            self._rates.hit(key.rate, name)
        return None
