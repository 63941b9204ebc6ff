"""HTTP login: Basic users with salted, slow password hashes and Bearer tokens, compared in constant time.

Login is off while `http.users` and `http.tokens` are both empty (the default:
the allowed networks alone decide). Once either is set, every path needs it,
except `/health` while `http.health_open` is on (monitoring).

A password is kept only as `scrypt$N$r$p$SALT$HASH` (SALT and HASH in base64),
made by `picamd hash-password`; `pbkdf2_sha256$ITERATIONS$SALT$HASH` is
accepted too, for a Python built without scrypt.

A slow hash costs tens of milliseconds on a Pi by design, and browsers and
players send the credentials again with every request: a success is
remembered as a keyed digest (the key is random per process, so the cache
holds no password) for as long as the stored hash is unchanged. Only one hash
runs at a time, so a guesser costs at most one core, and an address that
fails `max_failures` times within `lockout_s` is answered 429 without any
hashing until the lockout ends.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import re
import secrets
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from daemon.core.repeat import RepeatedLog

if TYPE_CHECKING:
    from daemon.config import Section

__all__ = ["HttpAuth", "Verdict", "check_tokens", "check_users", "hash_password", "verify_password"]

log = logging.getLogger("picamd.http")

REALM = "picamd"
#: scrypt with N=2^14, r=8, p=1: 16 MiB and some 60 ms of a desktop core per hash, several times that on a Pi. OWASP asks
#: for N=2^17 (128 MiB) on a server, or N=2^14 with p=5; a Pi Zero has 512 MB and a login must not take seconds there,
#: so picamd stays at this and relies on the lockout below against guessing.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
PBKDF2_ITERATIONS = 600_000
_SALT_BYTES = 16
_HASH_BYTES = 32
_MAX_SCRYPT_MEMORY = 256 * 2**20
_TOKEN_CHARS = re.compile(r"[A-Za-z0-9._~+/=-]{16,512}")
_USER_NAME = re.compile(r"[^:\x00-\x1f\x7f]{1,64}")


@dataclass(frozen=True)
class _Hash:
    kind: str  # scrypt or pbkdf2_sha256
    params: tuple[int, ...]
    salt: bytes
    digest: bytes

    def compute(self, password: bytes) -> bytes:
        if self.kind == "scrypt":
            n, r, p = self.params
            return hashlib.scrypt(password, salt=self.salt, n=n, r=r, p=p, maxmem=128 * r * (n + p + 2) + 2**20, dklen=len(self.digest))
        return hashlib.pbkdf2_hmac("sha256", password, self.salt, self.params[0], dklen=len(self.digest))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {what} is not base64") from None


def parse_hash(line: str) -> _Hash:
    """`scrypt$N$r$p$SALT$HASH` or `pbkdf2_sha256$ITERATIONS$SALT$HASH`; ValueError says what is wrong."""
    parts = str(line).strip().split("$")
    try:
        if parts[0] == "scrypt" and len(parts) == 6:
            n, r, p = (int(x) for x in parts[1:4])
            if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
                raise ValueError("scrypt needs N a power of two >= 1024, r 1..64 and p 1..16")
            if 128 * r * n > _MAX_SCRYPT_MEMORY:
                raise ValueError(f"scrypt N={n} r={r} needs more than {_MAX_SCRYPT_MEMORY >> 20} MiB per login")
            found = _Hash("scrypt", (n, r, p), _unb64(parts[4], "salt"), _unb64(parts[5], "hash"))
        elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
            iterations = int(parts[1])
            if not 10_000 <= iterations <= 10_000_000:
                raise ValueError("pbkdf2_sha256 needs 10000..10000000 iterations")
            found = _Hash("pbkdf2_sha256", (iterations,), _unb64(parts[2], "salt"), _unb64(parts[3], "hash"))
        else:
            raise ValueError("must be a hash from `picamd hash-password` (scrypt$N$r$p$SALT$HASH), not a plain password")
    except ValueError as exc:
        if "invalid literal" in str(exc):
            raise ValueError("the numbers of the hash are not whole numbers") from None
        raise
    if len(found.salt) < 8 or len(found.digest) < 16:
        raise ValueError("the salt must be 8+ bytes and the hash 16+ bytes")
    return found


def hash_password(password: str, *, kind: str = "scrypt") -> str:
    """The line to put under `http.users` for this password (a fresh random salt each time)."""
    if not password:
        raise ValueError("the password is empty")
    salt = secrets.token_bytes(_SALT_BYTES)
    if kind == "scrypt":
        spec = _Hash("scrypt", (SCRYPT_N, SCRYPT_R, SCRYPT_P), salt, bytes(_HASH_BYTES))
        return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(spec.compute(password.encode()))}"
    if kind == "pbkdf2_sha256":
        spec = _Hash("pbkdf2_sha256", (PBKDF2_ITERATIONS,), salt, bytes(_HASH_BYTES))
        return f"pbkdf2_sha256${PBKDF2_ITERATIONS}${_b64(salt)}${_b64(spec.compute(password.encode()))}"
    raise ValueError(f"unknown hash kind {kind!r} (scrypt or pbkdf2_sha256)")


def verify_password(password: str, line: str) -> bool:
    """True if `password` matches the stored hash `line` (compared in constant time)."""
    stored = parse_hash(line)
    return hmac.compare_digest(stored.compute(password.encode()), stored.digest)


# --- config checks (used by the schema) ------------------------------------------------------------


def check_users(value: dict) -> dict:
    out: dict[str, str] = {}
    for name, line in value.items():
        if not isinstance(name, str) or not _USER_NAME.fullmatch(name):
            raise ValueError(f"user {str(name)[:40]!r}: a name is 1..64 characters without ':' or control characters")
        if not isinstance(line, str):
            raise ValueError(f"user {name!r}: the value must be a hash from `picamd hash-password`")
        try:
            parse_hash(line)
        except ValueError as exc:
            raise ValueError(f"user {name!r}: {exc}") from None
        out[name] = line.strip()
    return out


def check_tokens(value: list) -> list:
    out: list[str] = []
    for i, token in enumerate(value):
        if not isinstance(token, str) or not _TOKEN_CHARS.fullmatch(token):
            raise ValueError(
                f"token #{i + 1}: must be 16..512 characters of letters, digits and -._~+/= "
                "(make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        out.append(token)
    return out


# --- the check of one request ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ok: bool
    who: str = ""  # the user, "token", or "" when no login was needed
    code: int = 200  # 401 (no or wrong credentials) or 429 (locked out) when not ok
    message: str = ""
    retry_after_s: int = 0


class HttpAuth:
    #: Wrong credentials from one address this many times within `lockout_s` -> 429 until the window ends.
    max_failures = 10
    lockout_s = 60.0
    #: Remembered successes (keyed digests); the cache starts again when full.
    cache_size = 256
    #: Addresses whose failures are tracked; the oldest is forgotten beyond this.
    max_tracked_peers = 1024

    def __init__(self, cfg: Section) -> None:
        self._cfg = cfg
        self._key = secrets.token_bytes(32)  # per process, never stored: a cached digest cannot be tested against guesses
        self._lock = threading.Lock()
        self._kdf_lock = threading.Lock()  # one slow hash at a time
        self._good: set[bytes] = set()
        self._failed: dict[str, list[float]] = {}  # peer -> monotonic times of recent failures
        self._successes = 0
        self._failures = 0
        self._lockouts = 0
        self._fail_log = RepeatedLog(log, every_s=60.0)

    @property
    def enabled(self) -> bool:
        return bool(self._cfg.users) or bool(self._cfg.tokens)

    def check(self, path: str, authorization: str | None, peer: str) -> Verdict:
        """Whether a request for `path` with this Authorization header may proceed."""
        users: dict[str, str] = self._cfg.users
        tokens: list[str] = self._cfg.tokens
        if not users and not tokens:
            return Verdict(True)
        if path == "/health" and self._cfg.health_open:
            return Verdict(True)
        if not authorization:
            return Verdict(False, code=401, message="login required\n")
        wait = self._locked_out(peer)
        if wait:
            return Verdict(False, code=429, message=f"too many failed logins from {peer}; try again in {wait} s\n", retry_after_s=wait)
        scheme, _, credentials = authorization.strip().partition(" ")
        scheme = scheme.lower()
        who = ""
        if scheme == "basic" and users:
            who = self._check_basic(credentials.strip(), users)
        elif scheme == "bearer" and tokens:
            who = "token" if self._check_token(credentials.strip(), tokens) else ""
        if who:
            with self._lock:
                self._successes += 1
            return Verdict(True, who=who)
        self._note_failure(peer, scheme)
        return Verdict(False, code=401, message="wrong user name, password or token\n")

    def _check_basic(self, credentials: str, users: dict[str, str]) -> str:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return ""
        name, colon, password = decoded.partition(":")
        if not colon:
            return ""
        line = users.get(name)
        # An unknown name costs a hash too, so the time of an answer does not tell which names exist.
        stored_line = line if line is not None else next(iter(users.values()))
        memo = hmac.new(self._key, "\0".join((name, password, stored_line)).encode(), hashlib.sha256).digest()
        with self._lock:
            if line is not None and memo in self._good:
                return name
        try:
            stored = parse_hash(stored_line)
        except ValueError:  # checked when the config was loaded; cannot happen unless the schema changes
            return ""
        with self._kdf_lock:
            matches = hmac.compare_digest(stored.compute(password.encode()), stored.digest)
        if not matches or line is None:
            return ""
        with self._lock:
            if len(self._good) >= self.cache_size:
                self._good.clear()
            self._good.add(memo)
        return name

    @staticmethod
    def _check_token(given: str, tokens: list[str]) -> bool:
        # Digests of equal length, and every token compared: the time says nothing about how much matched, or which.
        probe = hashlib.sha256(given.encode()).digest()
        found = False
        for token in tokens:
            found |= hmac.compare_digest(probe, hashlib.sha256(token.encode()).digest())
        return found

    def _locked_out(self, peer: str) -> int:
        now = time.monotonic()
        with self._lock:
            times = [t for t in self._failed.get(peer, ()) if now - t < self.lockout_s]
            if times:
                self._failed[peer] = times
            else:
                self._failed.pop(peer, None)
            if len(times) < self.max_failures:
                return 0
            return max(1, int(times[0] + self.lockout_s - now + 0.999))

    def _note_failure(self, peer: str, scheme: str) -> None:
        now = time.monotonic()
        with self._lock:
            self._failures += 1
            times = self._failed.setdefault(peer, [])
            times.append(now)
            del times[: -self.max_failures]
            locked = len(times) >= self.max_failures
            if locked:
                self._lockouts += 1
            if len(self._failed) > self.max_tracked_peers:
                del self._failed[next(iter(self._failed))]
        if locked:
            self._fail_log.warning(
                f"lockout {peer}",
                "HTTP login: %d failures from %s within %.0f s; refusing its logins for a while",
                self.max_failures,
                peer,
                self.lockout_s,
            )
        else:
            self._fail_log.warning(f"fail {peer}", "HTTP login failed from %s (%s)", peer, scheme or "no scheme")

    def health(self) -> dict[str, Any]:
        with self._lock:
            now = time.monotonic()
            locked = sum(1 for times in self._failed.values() if len(times) >= self.max_failures and now - times[0] < self.lockout_s)
            return {
                "enabled": self.enabled,
                "users": len(self._cfg.users),
                "tokens": len(self._cfg.tokens),
                "health_open": bool(self._cfg.health_open),
                "logins_ok": self._successes,
                "logins_failed": self._failures,
                "lockouts": self._lockouts,
                "locked_out_peers": locked,
            }
