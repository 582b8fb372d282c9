"""Job callbacks that cannot be turned against the inside of the network, and that a receiver can verify.

A client names a URL; the service POSTs the job's status there when the job ends. Left open,
that is a request forgery tool: a URL naming a cloud metadata address, the Ray dashboard or a
database makes the server call it. So:

- only ``https`` (``http`` only when the operator allows it);
- the URL is refused when it holds a control character or a blank (CR/LF would split the
  request line into headers; tabs and newlines are silently dropped by URL parsers) or names
  port 0;
- every address the host resolves to must be a public unicast address: loopback, private,
  link-local (cloud metadata), carrier-grade NAT, multicast, reserved and unspecified ranges
  are refused, and so are site-local IPv6 (``fec0::/10``) and every IPv6 form that embeds or
  routes to an IPv4 address (IPv4-mapped ``::ffff:0:0/96`` and -compatible ``::/96``, 6to4
  ``2002::/16``, Teredo ``2001::/32``, NAT64 ``64:ff9b::/96`` and ``64:ff9b:1::/48``), whatever
  IPv4 address they carry, unless the host or its address is on the operator's allow-list;
- the check is made when the job is accepted and again when the callback is sent, and the
  connection goes to the very address that was checked (a DNS answer that changes in between
  cannot redirect it); redirects are never followed;
- a bounded number of tries with back-off; a 4xx answer is not retried;
- the body is signed: ``X-Pose-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">``
  so a receiver can check who sent it and when. The key is the job's client's own secret
  (`SecretSources`), known to that client and the service only, so no client can forge or even
  check another's callbacks; a client without one gets the operator's single secret of earlier
  releases, shared by every such client; with neither the callback goes unsigned.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import ipaddress
import logging
import os
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping
from urllib.parse import urlsplit

from pipeline.errors import InputError, PoseError
from service.auth import check_client_id

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Pose-Signature"
MAX_URL_LENGTH = 2048
SECRET_ENV = "POSE_CALLBACK_SECRET"  # the one secret of earlier releases: signs for clients without their own
SECRETS_ENV = "POSE_CALLBACK_SECRETS"  # client_id:secret entries in the variable itself
SECRETS_FILE_ENV = "POSE_CALLBACK_SECRETS_FILE"  # path of a file of such entries (a mounted Secret)
# 128 bits at the least: an HMAC key much shorter than that can be guessed from one signed body.
MIN_SECRET_BYTES = 16
# A comment starts at a '#' opening the line or following a blank; a '#' inside a secret is the secret's.
_COMMENT = re.compile(r"(^|\s)#.*")
# Not global unicast, or not safe to call, beyond what `ipaddress` flags as non-global:
# carrier-grade NAT, IETF protocol assignments, the EC2 IPv6 metadata range, site-local IPv6.
_ALWAYS_BLOCKED = [ipaddress.ip_network(n) for n in ("100.64.0.0/10", "192.0.0.0/24", "fd00:ec2::/32", "fec0::/10")]
# IPv6 forms that carry an IPv4 address or are translated to IPv4 on the way: a gateway or the
# host's own stack may deliver them to that IPv4 address (6to4 of 169.254.169.254 reaches the
# metadata service), so none is a public IPv6 address of its own.
_EMBEDS_IPV4 = [
    ipaddress.ip_network(n)
    for n in ("::ffff:0:0/96", "::/96", "2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48")
]
# Control characters (C0, DEL, C1) and the blank: never part of a URL as sent.
_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]


@dataclass(frozen=True)
class CallbackPolicy:
    """What callback URLs may name, and how they are called."""

    allow_http: bool = False  # plain http (e.g. a receiver inside a trusted network)
    allow_hosts: tuple[str, ...] = ()  # host names, addresses or CIDR ranges allowed even if internal
    secret: bytes | None = field(default=None, repr=False)  # HMAC key of the signature header; None: unsigned
    timeout_s: float = 5.0
    tries: int = 3
    backoff_s: float = 1.0  # first wait between tries, doubled after each
    _networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        nets = []
        for entry in self.allow_hosts:
            try:
                nets.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                continue  # a host name: compared by name
        object.__setattr__(self, "_networks", tuple(nets))

    def host_allowed(self, host: str) -> bool:
        return host.lower().rstrip(".") in {h.lower().rstrip(".") for h in self.allow_hosts}

    def address_allowed(self, addr: Address) -> bool:
        return any(addr in net for net in self._networks if net.version == addr.version)


@dataclass(frozen=True)
class Target:
    """A checked callback URL: where to connect (the checked address) and what to ask for."""

    scheme: str
    host: str
    port: int
    path: str
    address: str


def _resolve(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return sorted({str(info[4][0]) for info in infos})


def is_public(addr: Address) -> bool:
    """A public unicast address (what a callback may reach without the allow-list)."""
    if isinstance(addr, ipaddress.IPv6Address) and any(addr in net for net in _EMBEDS_IPV4):
        return False
    if not addr.is_global or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
        return False
    return not any(addr in net for net in _ALWAYS_BLOCKED if net.version == addr.version)


def check_url(url: str, policy: CallbackPolicy, resolve: Resolver = _resolve) -> Target:
    """The URL as a `Target`, or `InputError` ``callback_url_forbidden`` / ``callback_url_invalid``."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise InputError("callback_url_invalid", f"expected an https URL of at most {MAX_URL_LENGTH} characters")
    control = _CONTROL.search(url)
    if control is not None:  # checked before parsing: urlsplit drops tabs and newlines silently
        raise InputError(
            "callback_url_invalid",
            f"expected a callback URL without control characters or blanks, got {control.group()!r} "
            f"at position {control.start()}",
        )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InputError("callback_url_invalid", f"the callback URL cannot be parsed: {exc}") from exc
    if port == 0:
        raise InputError("callback_url_invalid", "expected a callback URL port from 1 to 65535, got 0")
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if scheme not in allowed:
        raise InputError("callback_url_invalid", f"expected a callback URL with scheme {' or '.join(allowed)}, got {scheme or 'none'!r}")
    host = parts.hostname
    if not host or parts.username is not None or parts.password is not None:
        raise InputError("callback_url_invalid", "expected a callback URL with a host and no user name or password")
    port = port or (443 if scheme == "https" else 80)
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise InputError("callback_url_unresolvable", f"the callback host {host!r} does not resolve: {exc}") from exc
    if not addresses:
        raise InputError("callback_url_unresolvable", f"the callback host {host!r} does not resolve")
    named = policy.host_allowed(host)
    for text in addresses:
        addr = ipaddress.ip_address(text.split("%", 1)[0])
        if not (named or is_public(addr) or policy.address_allowed(addr)):
            embeds = isinstance(addr, ipaddress.IPv6Address) and any(addr in net for net in _EMBEDS_IPV4)
            what = "an IPv6 address that embeds or routes to an IPv4 address" if embeds else "an internal address"
            raise InputError(
                "callback_url_forbidden",
                f"the callback host {host!r} resolves to {addr}, {what}; callbacks go to public "
                "addresses only unless the operator allows the host",
            )
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return Target(scheme, host, port, path, addresses[0])


def parse_secrets(text: str, source: str) -> dict[str, bytes]:
    """The ``client_id:secret`` entries of a secrets file or variable, by client.

    One entry a line, or several on a line separated by commas (as an environment variable holds
    them); ``#`` comments. The secret is everything after the first ``:``, taken as UTF-8, at least
    `MIN_SECRET_BYTES` bytes, without blanks or commas (``secrets.token_urlsafe(32)`` makes one).
    A client listed twice is an error rather than a choice: one secret signs a client's callbacks.

    An error (``callback_secrets_invalid``) names ``source`` and the line and quotes nothing of
    the text: an entry that does not parse may hold its secret anywhere, even where the client id
    was meant to be (an entry written the wrong way round)."""
    found: dict[str, bytes] = {}
    lines: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}, line {number}"
        for entry in _COMMENT.sub("", line).split(","):
            entry = entry.strip()
            if not entry:
                continue
            client, colon, secret = entry.partition(":")
            if not colon or not secret:
                raise _invalid_secrets(where, "expected client_id:secret")
            try:
                check_client_id(client)
            except PoseError:
                raise _invalid_secrets(
                    where, "expected a client id of 1 to 64 letters, digits, '.', '_' or '-' before the ':'"
                ) from None
            if any(c.isspace() for c in secret):
                raise _invalid_secrets(where, "expected a secret without blanks")
            key = secret.encode()
            if len(key) < MIN_SECRET_BYTES:
                raise _invalid_secrets(where, f"expected a secret of at least {MIN_SECRET_BYTES} bytes, got {len(key)}")
            if client in found:
                raise _invalid_secrets(where, f"the client of line {lines[client]} again: a client has one secret")
            found[client], lines[client] = key, number
    return found


def _invalid_secrets(where: str, what: str) -> PoseError:
    return PoseError("callback_secrets_invalid", f"{where}: {what}", status=500)


@dataclass(frozen=True)
class SecretSources:
    """Where the keys that sign callbacks are read: the environment of the node that sends the
    callback, read again at every callback, so an edited file or variable needs no restart."""

    secrets_env: str = SECRETS_ENV  # client_id:secret entries, comma- or newline-separated
    file_env: str = SECRETS_FILE_ENV  # a file of such entries; both may be set, a client in one of them only
    secret_env: str = SECRET_ENV  # the shared secret of clients without their own

    def load(self, environ: Mapping[str, str] | None = None) -> dict[str, bytes]:
        """Every client's own secret. A file that is named but missing, unreadable, malformed or
        empty is an error (``callback_secrets_invalid``): it was meant to hold secrets, and
        taking it as none would sign with the shared secret, or not at all, instead."""
        env = os.environ if environ is None else environ
        found: dict[str, bytes] = {}
        path = env.get(self.file_env) or None
        if path is not None:
            found = _read_secrets_file(Path(path).expanduser())
        text = env.get(self.secrets_env, "")
        if text.strip():
            for client, key in parse_secrets(text, f"${self.secrets_env}").items():
                if client in found:
                    raise PoseError(
                        "callback_secrets_invalid",
                        f"${self.secrets_env} and the file in ${self.file_env} name one client: a client has one secret",
                        status=500,
                    )
                found[client] = key
        return found

    def secret_for(self, client: str | None, environ: Mapping[str, str] | None = None) -> bytes | None:
        """The key that signs ``client``'s callbacks: its own, else the shared one, else None
        (unsigned). ``client`` None reads the shared one only, for checking a URL, where no
        callback is signed (a malformed secrets file then refuses no upload)."""
        env = os.environ if environ is None else environ
        if client is not None:
            own = self.load(env).get(client)
            if own is not None:
                return own
        shared = env.get(self.secret_env)
        return shared.encode() if shared else None


def _read_secrets_file(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        # the decoder's message quotes the offending byte, which would be a byte of a secret
        raise PoseError("callback_secrets_invalid", f"the callback secrets file {path} is not UTF-8 text", status=500) from None
    except OSError as exc:
        raise PoseError(
            "callback_secrets_invalid", f"cannot read the callback secrets file {path}: {type(exc).__name__}: {exc}", status=500
        ) from None
    found = parse_secrets(text, str(path))
    if not found:
        raise PoseError("callback_secrets_invalid", f"the callback secrets file {path} holds no secrets", status=500)
    return found


def signature(secret: bytes, body: bytes, timestamp: int) -> str:
    """The signature header's value for ``body`` sent at ``timestamp`` (unix seconds)."""
    mac = hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, body: bytes, header: str, *, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """What a receiver runs: the header is ours, for this body, and recent."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (ValueError, KeyError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(signature(secret, body, timestamp), header)


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to the checked address, whatever the host name resolves to now."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self._address = target.address

    def connect(self) -> None:
        self.sock = socket.create_connection((self._address, self.port), self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to the checked address, the certificate checked against the URL's host name."""

    def __init__(self, target: Target, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout, context=ssl.create_default_context())
        self._address = target.address

    def connect(self) -> None:
        sock = socket.create_connection((self._address, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[attr-defined]


def post(
    url: str, body: bytes, policy: CallbackPolicy, resolve: Resolver = _resolve, headers: Mapping[str, str] | None = None
) -> int:
    """POST ``body`` (JSON) to ``url`` under ``policy``, with ``headers`` besides its own; the final HTTP status.

    Raises `InputError` when the URL is (now) refused, `OSError` / `http.client.HTTPException`
    when every try failed."""
    delay = policy.backoff_s
    last: Exception | None = None
    for attempt in range(1, max(1, policy.tries) + 1):
        target = check_url(url, policy, resolve)  # again at every try: no DNS rebinding
        sent = {**(headers or {}), "Content-Type": "application/json", "User-Agent": "pose-service"}
        if policy.secret:
            sent[SIGNATURE_HEADER] = signature(policy.secret, body, int(time.time()))
        conn = (_PinnedHTTPS if target.scheme == "https" else _PinnedHTTP)(target, policy.timeout_s)
        try:
            conn.request("POST", target.path, body=body, headers=sent)
            status, last = conn.getresponse().status, None
        except (OSError, http.client.HTTPException) as exc:
            last, status = exc, None
        finally:
            conn.close()
        if status is not None and status < 500:
            return status  # 2xx done; 3xx (never followed) and 4xx are the receiver's answer
        logger.info("callback try %d of %d failed: %s", attempt, policy.tries, last or f"HTTP {status}")
        if attempt < policy.tries:
            time.sleep(delay)
            delay *= 2
    if last is not None:
        raise last
    return int(status)  # type: ignore[arg-type]
