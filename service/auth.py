"""Client keys: who is calling, so that each client's jobs are its own.

A key is a random secret handed to one client. The service keeps only its SHA-256 digest, in a
keys file or an environment variable, one entry a line::

    # client_id:sha256-hex-of-the-key[:admin]
    alice:3f0c...e1
    ops:9a2b...77:admin

or as JSON, ``[{"client": "alice", "sha256": "3f0c...e1", "admin": false}, ...]`` (also under a
top-level ``"keys"``). A presented key is hashed and compared with every digest in constant time
(`hmac.compare_digest`, no early exit), and no key, digest or part of either is ever logged.
Two entries may name one client (rotation: the old and the new key both work until the old line
goes); one digest may not name two clients.

The single bearer token of earlier releases (``POSE_SERVICE_TOKEN``) still works: it is the key
of the client ``default``, an admin. With no key at all every caller is that client, which is
only safe on loopback (`check_exposure`).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

from pipeline.errors import PoseError

log = logging.getLogger(__name__)

DEFAULT_CLIENT = "default"  # the legacy token's client, every caller's when no key is configured
KEY_PREFIX = "psk_"  # marks a pose-service key in a config or a leaked-secret scan
AuthMode = Literal["keys", "none"]

_CLIENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DIGEST = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Client:
    """Who made a request. Jobs are filed under ``id``; an admin sees every client's jobs."""

    id: str
    admin: bool = False

    @property
    def scope(self) -> str | None:
        """The client whose jobs this caller may see; None: all of them."""
        return None if self.admin else self.id


ANONYMOUS = Client(DEFAULT_CLIENT, admin=True)  # every caller, where authentication is off


@dataclass(frozen=True)
class ClientKey:
    """One accepted key, by its digest."""

    client: str  # the client id the key authenticates as
    digest: bytes  # SHA-256 of the key's UTF-8 bytes (32 bytes)
    admin: bool  # sees and manages every client's jobs


def hash_key(key: str) -> str:
    """The hex SHA-256 a keys file holds for ``key``."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    """A fresh key: 256 random bits, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def key_line(client: str, key: str, admin: bool = False) -> str:
    """The keys-file line that accepts ``key`` for ``client``."""
    return f"{check_client_id(client)}:{hash_key(key)}" + (":admin" if admin else "")


def check_client_id(client: str) -> str:
    if not isinstance(client, str) or not _CLIENT_ID.fullmatch(client):
        raise PoseError(
            "client_id_invalid",
            f"expected a client id of 1 to 64 letters, digits, '.', '_' or '-' (starting with a letter or digit), got {client!r}",
        )
    return client


def parse_keys(text: str, source: str) -> list[ClientKey]:
    """The entries of a keys file or variable (lines, or JSON when it starts with ``[`` or ``{``).

    ``source`` names where the text came from, for the error message (which never quotes a
    digest)."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        return _parse_json(stripped, source)
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.split("#", 1)[0]
        for entry in line.split(","):  # commas: several entries in one environment variable
            entry = entry.strip()
            if entry:
                keys.append(_parse_entry(entry, f"{source}, line {number}"))
    return keys


def _parse_entry(entry: str, where: str) -> ClientKey:
    parts = entry.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin"):
        raise _invalid(where, "expected client_id:sha256-hex or client_id:sha256-hex:admin")
    return _key(parts[0], parts[1], len(parts) == 3, where)


def _parse_json(text: str, source: str) -> list[ClientKey]:
    try:
        doc: Any = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise _invalid(source, f"not valid JSON ({type(exc).__name__} at line {getattr(exc, 'lineno', '?')})") from None
    entries = doc.get("keys") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise _invalid(source, 'expected a JSON list of {"client", "sha256", "admin"} objects (or one under "keys")')
    keys = []
    for i, item in enumerate(entries):
        where = f"{source}, entry {i}"
        if not isinstance(item, dict) or not {"client", "sha256"} <= set(item) or set(item) - {"client", "sha256", "admin"}:
            raise _invalid(where, 'expected an object with "client", "sha256" and optionally "admin"')
        admin = item.get("admin", False)
        if not isinstance(admin, bool):
            raise _invalid(where, f'expected "admin" to be true or false, got {type(admin).__name__}')
        keys.append(_key(item["client"], item["sha256"], admin, where))
    return keys


def _key(client: Any, digest: Any, admin: bool, where: str) -> ClientKey:
    if not isinstance(client, str) or not _CLIENT_ID.fullmatch(client):
        raise _invalid(where, "expected a client id of 1 to 64 letters, digits, '.', '_' or '-'")
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise _invalid(where, "expected the key's SHA-256 as 64 hex digits (python -m service keys new CLIENT)")
    return ClientKey(client, bytes.fromhex(digest), admin)


def _invalid(where: str, what: str) -> PoseError:
    return PoseError("auth_keys_invalid", f"{where}: {what}", status=500)


class KeyRing:
    """The accepted keys. `authenticate` costs the same whichever entry matches, or none."""

    def __init__(self, keys: Sequence[ClientKey] = ()) -> None:
        owners: dict[bytes, ClientKey] = {}
        for key in keys:
            seen = owners.get(key.digest)
            if seen is not None and (seen.client, seen.admin) != (key.client, key.admin):
                raise PoseError(
                    "auth_keys_invalid",
                    f"one key is listed for {seen.client!r} and for {key.client!r}: a key names one client",
                    status=500,
                )
            owners[key.digest] = key
        self._keys = tuple(owners.values())

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def clients(self) -> list[str]:
        return sorted({k.client for k in self._keys})

    def authenticate(self, presented: str) -> Client | None:
        """The client ``presented`` is a key of, or None."""
        digest = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
        found: ClientKey | None = None
        for key in self._keys:  # every entry is compared: the time says nothing about which matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        return None if found is None else Client(found.client, found.admin)


@dataclass(frozen=True)
class KeySources:
    """Where keys are read from, on each process that checks them (the environment of its node)."""

    file: str | None = None  # keys file; None: the path in $<file_env>, if set
    file_env: str = "POSE_SERVICE_KEYS_FILE"
    keys_env: str = "POSE_SERVICE_KEYS"  # entries in the variable itself, comma- or newline-separated
    token_env: str = "POSE_SERVICE_TOKEN"  # the earlier single token: client "default", admin

    def path(self, environ: Mapping[str, str] | None = None) -> Path | None:
        env = os.environ if environ is None else environ
        value = self.file or env.get(self.file_env) or None
        return None if value is None else Path(value).expanduser()

    def load(self, environ: Mapping[str, str] | None = None) -> KeyRing:
        """Every configured key. A keys file that is named but missing, unreadable, malformed or
        empty is an error (`auth_keys_invalid`): it was meant to hold keys, so it never means none."""
        env = os.environ if environ is None else environ
        keys: list[ClientKey] = []
        path = self.path(env)
        if path is not None:
            keys += _read_file(path)
        text = env.get(self.keys_env, "")
        if text.strip():
            keys += parse_keys(text, f"${self.keys_env}")
        token = env.get(self.token_env, "")
        if token:
            keys.append(ClientKey(DEFAULT_CLIENT, hashlib.sha256(token.encode()).digest(), True))
        return KeyRing(keys)


def _read_file(path: Path) -> list[ClientKey]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PoseError("auth_keys_invalid", f"cannot read the keys file {path}: {type(exc).__name__}: {exc}", status=500) from None
    keys = parse_keys(text, str(path))
    if not keys:
        raise PoseError("auth_keys_invalid", f"the keys file {path} holds no keys", status=500)
    return keys


class LiveKeys:
    """The keys of `KeySources`, read again when the keys file changes, so a key is added or
    revoked without a restart. The file is looked at (``stat``) at most every ``check_every_s``;
    a change that does not parse is logged and the keys in force are kept."""

    def __init__(
        self,
        sources: KeySources,
        *,
        environ: Mapping[str, str] | None = None,
        check_every_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sources = sources
        self._environ = dict(os.environ if environ is None else environ)
        self._path = sources.path(self._environ)
        self._every = check_every_s
        self._clock = clock
        self._stamp = self._file_stamp()
        self._ring = sources.load(self._environ)
        self._checked = clock()

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def current(self) -> KeyRing:
        if self._path is None or self._clock() - self._checked < self._every:
            return self._ring
        self._checked = self._clock()
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return self._ring
        try:
            ring = self.sources.load(self._environ)
        except PoseError as exc:
            log.error("keys file changed but was not taken (the keys in force stay): %s", exc.message)
            return self._ring
        self._stamp, self._ring = stamp, ring
        log.info("keys file %s read again: %d keys for %d clients", self._path, len(ring), len(ring.clients))
        return ring


def is_loopback(host: str | None) -> bool:
    """Whether an HTTP listen address reaches this machine only. Names other than ``localhost``
    are not trusted to be loopback (they may resolve anywhere); ``0.0.0.0`` and ``::`` are every
    interface; None (no HTTP proxy) listens nowhere."""
    if host is None:
        return True
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_exposure(host: str | None, mode: AuthMode, keys: int) -> None:
    """Refuse to serve a network without keys: a listen address other than loopback needs at
    least one key, or ``auth: none`` said explicitly (``auth_required``). ``auth: none`` with
    keys configured is a contradiction (``auth_conflict``)."""
    if mode == "none":
        if keys:
            raise PoseError(
                "auth_conflict",
                f"auth: none, but {keys} keys are configured: remove the keys or the 'auth: none' setting",
                status=500,
            )
        return
    if keys == 0 and not is_loopback(host):
        raise PoseError(
            "auth_required",
            f"the HTTP proxy listens on {host!r}, which is not loopback, and no client key is configured: set "
            "POSE_SERVICE_KEYS_FILE (lines from `python -m service keys new CLIENT`) or POSE_SERVICE_TOKEN on every "
            "node, or listen on 127.0.0.1, or set 'auth: none' to serve without authentication",
            status=500,
        )
