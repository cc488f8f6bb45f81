"""API keys and the per-key rate limit.

Keys come from environment variables only (the config names the variables, default
``SO8T_CLIENT_KEYS`` and ``SO8T_REVIEWER_KEYS``), each a comma-separated list of ``name:secret``. The
name appears in metrics and in audit records of what a key did (a resolution, the emergency switch);
the secret is kept only as its sha256 and compared in constant time. Two roles: a *client* may ask for
decisions; a *reviewer* may also list and resolve escalations and throw the emergency switch.

A reviewer key may be limited to desks, the routes of the safety policy: ``sato@medical:secret`` or
``ito@legal+hr:secret``. Such a key lists and resolves only the cases routed to its desks (an HR or medical
case is for its own desk's eyes) and may read but not throw the emergency switch; a key without ``@`` reviews
every desk.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ...core.config import ConfigError
from ...core.schema import ROUTE_CATEGORIES

CLIENT, REVIEWER = "client", "reviewer"
ROLES = (CLIENT, REVIEWER)
MIN_SECRET_CHARS = 16
KEY_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
SECRET_CHARS = re.compile(r"[\x21-\x2b\x2d-\x7e]+")  # printable ASCII but space and the separator ","


@dataclass(frozen=True)
class ApiKey:
    name: str
    role: str
    digest: bytes
    desks: frozenset[str] | None = None  # a reviewer's routes; None: every desk

    def may(self, role: str) -> bool:
        """A reviewer may do what a client may; a client may not review."""
        return self.role == REVIEWER or role == CLIENT

    def reviews(self, category: str | None) -> bool:
        """Whether this reviewer may see and resolve a case routed to ``category``."""
        return self.role == REVIEWER and (self.desks is None or category in self.desks)


def _name_and_desks(label: str, role: str, where: str) -> tuple[str, frozenset[str] | None]:
    name, at, desks = label.partition("@")
    if not at:
        return name, None
    if role != REVIEWER:
        raise ConfigError(f"{where} ({name}): only reviewer keys have desks (name@desk+desk:secret)")
    chosen = desks.split("+")
    unknown = [d for d in chosen if d not in ROUTE_CATEGORIES]
    if not desks or unknown:
        raise ConfigError(f"{where} ({name}): unknown desk {unknown or [desks]}; desks are {list(ROUTE_CATEGORIES)}")
    return name, frozenset(chosen)


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


class ApiKeys:
    def __init__(self, keys: list[ApiKey]) -> None:
        if not keys:
            raise ConfigError("no API keys: the service would answer nobody")
        names = [k.name for k in keys]
        if len(set(names)) != len(names):
            raise ConfigError(f"API key names must be unique, got {sorted(names)}")
        by_secret: dict[bytes, list[str]] = {}
        for key in keys:
            by_secret.setdefault(key.digest, []).append(f"{key.name} ({key.role})")
        shared = [owners for owners in by_secret.values() if len(owners) > 1]
        if shared:  # the token would be whichever key came last: a gateway's secret could carry a reviewer's role
            raise ConfigError(f"API keys {', '.join(shared[0])} have the same secret; give each key its own "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
        self.keys = keys

    @classmethod
    def parse(cls, entries: Mapping[str, str | None], env_names: Mapping[str, str]) -> ApiKeys:
        """Keys from ``{role: "name:secret,..."}``; ``env_names`` names each role's variable in errors."""
        keys: list[ApiKey] = []
        for role in ROLES:
            for n, entry in enumerate(filter(None, (e.strip() for e in (entries.get(role) or "").split(","))), 1):
                label, sep, secret = entry.partition(":")
                where = f"{env_names[role]} entry {n}"
                name, desks = _name_and_desks(label, role, where)
                if not sep or not KEY_NAME.fullmatch(name):
                    raise ConfigError(f"{where}: write name:secret (a name of letters, digits, . _ -)")
                if not SECRET_CHARS.fullmatch(secret):  # a header carries latin-1, so e.g. "ä" could never match
                    raise ConfigError(f"{where} ({name}): the secret must be printable ASCII without spaces or commas, "
                                      "as a bearer token is (e.g. python -c 'import secrets; "
                                      "print(secrets.token_urlsafe(32))')")
                if len(secret) < MIN_SECRET_CHARS:
                    raise ConfigError(f"{where} ({name}): the secret must have at least {MIN_SECRET_CHARS} "
                                      "characters (e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')")
                keys.append(ApiKey(name, role, _digest(secret), desks))
        if not keys:
            raise ConfigError(f"no API keys: set {env_names[CLIENT]} (and {env_names[REVIEWER]} for reviewers) "
                              "to name:secret,... in the environment")
        return cls(keys)

    @classmethod
    def from_env(cls, client_env: str, reviewer_env: str, environ: Mapping[str, str] | None = None) -> ApiKeys:
        environ = os.environ if environ is None else environ
        return cls.parse({CLIENT: environ.get(client_env), REVIEWER: environ.get(reviewer_env)},
                         {CLIENT: client_env, REVIEWER: reviewer_env})

    def identify(self, token: str) -> ApiKey | None:
        """The key this bearer token is, comparing every key in constant time (no early exit)."""
        digest = _digest(token)
        found = None
        for key in self.keys:
            if hmac.compare_digest(digest, key.digest):
                found = key
        return found


class RateLimiter:
    """A token bucket per key: ``burst`` at once, refilled at ``per_minute``. Hand-written because it is
    this small; a shared limit across several server processes belongs in the gateway in front."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate, self.burst = per_minute / 60.0, burst
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key: str, cost: int = 1) -> float | None:
        """None when allowed (tokens taken); otherwise the seconds until ``cost`` tokens are there."""
        now = time.monotonic()
        with self._lock:
            tokens, stamp = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            if tokens >= cost:
                self._buckets[key] = (tokens - cost, now)
                return None
            self._buckets[key] = (tokens, now)
            return max(0.001, (cost - tokens) / self.rate)

    def refund(self, key: str, cost: int) -> None:
        """Give back tokens taken for requests that were never decided (503: overloaded or shutting down), or the
        first token of a call that is then refused 429 (a 429 costs nothing)."""
        with self._lock:
            if key in self._buckets:
                tokens, stamp = self._buckets[key]
                self._buckets[key] = (min(float(self.burst), tokens + cost), stamp)

    @staticmethod
    def retry_after(seconds: float) -> str:
        return str(max(1, math.ceil(seconds)))
