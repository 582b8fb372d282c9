"""Callbacks: which URLs are refused, that the checked address is the one called, the signature,
tries and redirects, against a real HTTP receiver on loopback (reached through the allow-list)."""

from __future__ import annotations

import http.server
import threading
from typing import Any, Iterator

import pytest

from pipeline.callbacks import SIGNATURE_HEADER, CallbackPolicy, check_url, post, signature, verify
from pipeline.errors import InputError


def fixed(*addresses: str):
    """A resolver answering ``addresses`` for any host."""
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "240.0.0.1"],
)
def test_internal_addresses_are_refused(address):
    with pytest.raises(InputError) as info:
        check_url("https://hooks.example.com/x", CallbackPolicy(), fixed(address))
    assert info.value.code == "callback_url_forbidden"


def test_one_internal_answer_among_public_ones_is_enough_to_refuse():
    with pytest.raises(InputError) as info:
        check_url("https://hooks.example.com/x", CallbackPolicy(), fixed("93.184.215.14", "127.0.0.1"))
    assert info.value.code == "callback_url_forbidden"


def test_public_https_url_is_checked_and_pinned():
    target = check_url("https://hooks.example.com/cb?job=1", CallbackPolicy(), fixed("93.184.215.14"))
    assert (target.scheme, target.host, target.port, target.path, target.address) == (
        "https", "hooks.example.com", 443, "/cb?job=1", "93.184.215.14")


@pytest.mark.parametrize(
    "url",
    ["http://hooks.example.com/x", "ftp://hooks.example.com/x", "file:///etc/passwd", "https://user:pw@hooks.example.com/",
     "https:///nohost", "https://hooks.example.com:99999/", "https://" + "a" * 3000 + ".com/"],
)
def test_malformed_or_plain_urls_are_refused(url):
    with pytest.raises(InputError) as info:
        check_url(url, CallbackPolicy(), fixed("93.184.215.14"))
    assert info.value.code == "invalid_callback_url"


def test_numeric_host_forms_resolve_to_what_they_mean():
    # 2130706433 is 127.0.0.1 written as one number: the real resolver says so, and it is refused
    with pytest.raises(InputError) as info:
        check_url("https://2130706433/", CallbackPolicy())
    assert info.value.code == "callback_url_forbidden"


def test_allow_list_by_name_and_by_range():
    by_name = CallbackPolicy(allow_hosts=("hooks.internal",))
    assert check_url("https://hooks.internal/x", by_name, fixed("10.0.0.5")).address == "10.0.0.5"
    with pytest.raises(InputError):
        check_url("https://other.internal/x", by_name, fixed("10.0.0.5"))
    by_range = CallbackPolicy(allow_hosts=("10.0.0.0/24",))
    assert check_url("https://any.internal/x", by_range, fixed("10.0.0.9")).address == "10.0.0.9"
    with pytest.raises(InputError):
        check_url("https://any.internal/x", by_range, fixed("10.0.1.9"))


def test_signature_verifies_and_rejects_tampering():
    secret, body = b"s3cret", b'{"event":"job.succeeded"}'
    header = signature(secret, body, 1_700_000_000)
    assert verify(secret, body, header, now=1_700_000_100)
    assert not verify(secret, body + b" ", header, now=1_700_000_100)
    assert not verify(b"other", body, header, now=1_700_000_100)
    assert not verify(secret, body, header, now=1_700_000_000 + 3600)  # replayed an hour later
    assert not verify(secret, body, "garbage", now=1_700_000_100)


class Receiver:
    """A loopback HTTP server answering each POST with the next status of ``answers``."""

    def __init__(self, answers: list[int]) -> None:
        self.answers, self.requests = list(answers), []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.requests.append((self.path, dict(self.headers), body))
                status = outer.answers.pop(0) if outer.answers else 204
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory() -> Iterator[Any]:
    made: list[Receiver] = []

    def make(answers: list[int]) -> Receiver:
        made.append(Receiver(answers))
        return made[-1]

    yield make
    for r in made:
        r.close()


LOOPBACK = CallbackPolicy(allow_http=True, allow_hosts=("127.0.0.1",), secret=b"k", tries=3, backoff_s=0.01)


def test_signed_post_reaches_an_allowed_receiver(receiver_factory):
    r = receiver_factory([204])
    assert post(f"http://127.0.0.1:{r.port}/hook", b'{"a":1}', LOOPBACK) == 204
    (path, headers, body), = r.requests
    assert path == "/hook" and body == b'{"a":1}'
    assert verify(b"k", body, headers[SIGNATURE_HEADER])


def test_loopback_is_refused_without_the_allow_list(receiver_factory):
    r = receiver_factory([204])
    with pytest.raises(InputError) as info:
        post(f"http://127.0.0.1:{r.port}/hook", b"{}", CallbackPolicy(allow_http=True, tries=1))
    assert info.value.code == "callback_url_forbidden" and r.requests == []


def test_connection_goes_to_the_checked_address(receiver_factory):
    """The host name is sent as Host, but the socket goes to the address the check saw."""
    r = receiver_factory([204])
    policy = CallbackPolicy(allow_http=True, allow_hosts=("hooks.test",), tries=1)
    assert post(f"http://hooks.test:{r.port}/x", b"{}", policy, fixed("127.0.0.1")) == 204
    assert r.requests[0][1]["Host"] == f"hooks.test:{r.port}"


def test_rebinding_between_tries_is_refused(receiver_factory):
    """A name that resolved to an allowed address at the first try and to an internal one at
    the retry: every try checks again, so the retry is refused."""
    r = receiver_factory([503])
    answers = iter([["127.0.0.1"], ["10.0.0.1"]])
    policy = CallbackPolicy(allow_http=True, allow_hosts=("127.0.0.1/32",), tries=2, backoff_s=0.01)
    with pytest.raises(InputError) as info:
        post(f"http://hooks.test:{r.port}/x", b"{}", policy, lambda host, port: next(answers))
    assert info.value.code == "callback_url_forbidden" and len(r.requests) == 1


def test_server_errors_are_retried_client_errors_and_redirects_are_not(receiver_factory):
    r = receiver_factory([500, 502, 204])
    assert post(f"http://127.0.0.1:{r.port}/x", b"{}", LOOPBACK) == 204 and len(r.requests) == 3
    r = receiver_factory([404])
    assert post(f"http://127.0.0.1:{r.port}/x", b"{}", LOOPBACK) == 404 and len(r.requests) == 1
    r = receiver_factory([302])
    assert post(f"http://127.0.0.1:{r.port}/x", b"{}", LOOPBACK) == 302
    assert [p for p, _, _ in r.requests] == ["/x"]  # the redirect is not followed
    r = receiver_factory([500, 500, 500, 204])
    assert post(f"http://127.0.0.1:{r.port}/x", b"{}", LOOPBACK) == 500 and len(r.requests) == 3  # bounded
