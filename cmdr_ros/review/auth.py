"""Accounts of the review station: roles, passwords as argon2id hashes (argon2-cffi: salted, slow), and the CSRF
token every form of a session carries.

Roles are ranked: a ``viewer`` reads decisions, parts and the dashboard; a ``reviewer`` also labels parts; an
``admin`` also sees the accounts. Accounts are made on the command line (``cmdr review users add``), with a database
role that may write the ``users`` table; the station itself only reads them.
"""
from __future__ import annotations

import hmac
import re
import secrets
import time
from dataclasses import dataclass
from typing import Callable, MutableMapping

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from cmdr_ros import CmdrError
from cmdr_ros.review.db import ReviewDB

ROLES = ("viewer", "reviewer", "admin")
NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_hasher = PasswordHasher()  # argon2id, the library's defaults (RFC 9106's second recommended setting)
_NOBODY = _hasher.hash(secrets.token_urlsafe(16))  # verified against for an unknown name: the same slow answer


@dataclass(frozen=True)
class User:
    name: str
    role: str

    def may(self, role: str) -> bool:
        """True when this account has ``role`` or a higher one."""
        return ROLES.index(self.role) >= ROLES.index(role)


def add_user(db: ReviewDB, name: str, role: str, password: str, *, replace: bool = False) -> None:
    """Store an account (its password hashed); ``replace`` sets a new role and password for an existing one."""
    if not NAME.match(name):
        raise CmdrError(f"account name {name!r}: 1-64 letters, digits or _ . @ -")
    if role not in ROLES:
        raise CmdrError(f"role {role!r}: one of {', '.join(ROLES)}")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise CmdrError(f"the password needs {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    db.ensure_schema()
    exists = find_user(db, name) is not None
    if exists and not replace:
        raise CmdrError(f"account {name!r} exists (--replace sets its role and password)")
    args = {"n": name, "r": role, "h": _hasher.hash(password), "t": time.time()}
    p = db.p
    sql = (f"UPDATE users SET role = {p('r')}, hash = {p('h')} WHERE name = {p('n')}" if exists else
           f"INSERT INTO users (name, role, hash, created_at) VALUES ({p('n')}, {p('r')}, {p('h')}, {p('t')})")
    db.write([(sql, args)])


def remove_user(db: ReviewDB, name: str) -> None:
    """Delete an account (the labels it gave stay, under its name)."""
    if find_user(db, name) is None:
        raise CmdrError(f"no account {name!r}")
    db.write([(f"DELETE FROM users WHERE name = {db.p('n')}", {"n": name})])


def list_users(db: ReviewDB) -> list[tuple[str, str, float]]:
    """(name, role, created_at) of every account, by name."""
    return [(n, r, float(t)) for n, r, t in db.rows("SELECT name, role, created_at FROM users ORDER BY name")]


def find_user(db: ReviewDB, name: str) -> User | None:
    got = db.rows(f"SELECT name, role FROM users WHERE name = {db.p('n')}", {"n": name})
    return User(*got[0]) if got else None


def check_login(db: ReviewDB, name: str, password: str) -> User | None:
    """The account when ``password`` is its password, else None (an unknown name takes as long to refuse)."""
    got = db.rows(f"SELECT name, role, hash FROM users WHERE name = {db.p('n')}", {"n": name}) \
        if NAME.match(name) and len(password) <= MAX_PASSWORD else []
    stored = got[0][2] if got else _NOBODY
    try:
        _hasher.verify(stored, password)
    except (VerificationError, InvalidHashError):
        return None
    return User(got[0][0], got[0][1]) if got else None


class LoginThrottle:
    """Refuses an account name's logins for ``lock_s`` seconds once ``max_failures`` of them failed within
    ``window_s`` (a password guesser gets a few tries per account every few minutes); in memory, per station."""

    def __init__(self, max_failures: int = 5, window_s: float = 300.0, lock_s: float = 300.0,
                 clock: Callable[[], float] = time.monotonic):
        self.max_failures, self.window_s, self.lock_s, self.clock = max_failures, window_s, lock_s, clock
        self._failures: dict[str, list[float]] = {}
        self._locked: dict[str, float] = {}  # name -> until

    def wait_s(self, name: str) -> float:
        """Seconds until ``name`` may try again (0: now)."""
        now = self.clock()
        for key in [k for k, until in self._locked.items() if until <= now]:
            del self._locked[key]
        return max(self._locked.get(name, now) - now, 0.0)

    def failed(self, name: str) -> None:
        now = self.clock()
        for key in [k for k, ts in self._failures.items() if ts[-1] < now - self.window_s]:
            del self._failures[key]  # forgotten: a name guessed once long ago takes no memory
        recent = [t for t in self._failures.get(name, []) if t >= now - self.window_s] + [now]
        if len(recent) >= self.max_failures:
            self._locked[name] = now + self.lock_s
            self._failures.pop(name, None)
        else:
            self._failures[name] = recent

    def succeeded(self, name: str) -> None:
        self._failures.pop(name, None)


def csrf_token(session: MutableMapping) -> str:
    """The session's CSRF token (made on first use); every form posts it back."""
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def csrf_ok(session: MutableMapping, posted: object) -> bool:
    """True when ``posted`` is this session's token (compared in constant time)."""
    expected = session.get("csrf")
    return isinstance(posted, str) and isinstance(expected, str) and hmac.compare_digest(posted, expected)
