"""Callbacks: which URLs are refused, that the checked address is the one called, the signature,
per-client signing secrets, tries and redirects, against a real HTTP receiver on loopback
(reached through the allow-list)."""

from __future__ import annotations

import http.server
import threading
from typing import Any, Iterator

import pytest

from pipeline.errors import InputError, PoseError
from service.callbacks import (
    SIGNATURE_HEADER,
    CallbackPolicy,
    SecretSources,
    check_url,
    parse_secrets,
    post,
    signature,
    verify,
)


def fixed(*addresses: str):
    """A resolver answering ``addresses`` for any host."""
    return lambda host, port: list(addresses)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "10.1.2.3", "172.16.0.9", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0", "224.0.0.1",
     "::1", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "240.0.0.1",
     # site-local, and IPv6 forms that embed or route to IPv4 (whatever IPv4 address they carry)
     "fec0::1", "2002:a9fe:a9fe::", "2002:7f00:1::", "2002:808:808::", "64:ff9b::a9fe:a9fe", "64:ff9b::808:808",
     "64:ff9b:1::1", "2001::1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "::ffff:8.8.8.8", "::8.8.8.8", "::127.0.0.1"],
)
def test_internal_addresses_are_refused(address):
    with pytest.raises(InputError) as info:
        check_url("https://hooks.example.com/x", CallbackPolicy(), fixed(address))
    assert info.value.code == "callback_url_forbidden"


@pytest.mark.parametrize(
    "url",
    ["https://hooks.example.com/a\r\nX-Injected: 1", "https://hooks.example.com/\n", "https://hooks.\texample.com/",
     "https://hooks.example.com/a b", "https://hooks.example.com/\x00", "https://hooks.example.com/\x7f",
     "https://hooks.example.com/\x85", "https://hooks.example.com:0/", "https://[2606:4700::1111]:0/"],
)
def test_control_characters_and_port_0_are_refused(url):
    with pytest.raises(InputError) as info:
        check_url(url, CallbackPolicy(), fixed("93.184.215.14"))
    assert info.value.code == "callback_url_invalid"


@pytest.mark.parametrize("address", ["2606:4700:4700::1111", "2a00:1450:4001:80b::200e", "93.184.215.14"])
def test_public_ipv6_and_ipv4_addresses_are_accepted(address):
    assert check_url("https://hooks.example.com/x", CallbackPolicy(), fixed(address)).address == address


@pytest.mark.parametrize("url", ["https://[2002:a9fe:a9fe::]/", "https://[64:ff9b::a9fe:a9fe]/", "https://[fec0::1]/",
                                 "https://hooks.example.com:0/", "https://hooks.example.com/a\r\nX: 1"])
def test_delivery_checks_the_url_again(url):
    """A URL stored before these checks existed is refused when the callback is sent: no request."""
    def resolver(host: str, port: int) -> list[str]:
        return [host] if ":" in host else ["93.184.215.14"]

    with pytest.raises(InputError) as info:
        post(url, b"{}", CallbackPolicy(tries=1), resolver)
    assert info.value.code in ("callback_url_forbidden", "callback_url_invalid")


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
    assert info.value.code == "callback_url_invalid"


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



# -- per-client secrets ---------------------------------------------------------------------------

ALICE, BOB, SHARED = "alice-secret-0123456789abcdef", "bob-secret-0123456789abcdefgh", "shared-secret-0123456789abcd"


def test_secrets_parse_lines_commas_and_comments():
    text = (
        "# client_id:secret\n"
        f"alice:{ALICE}  # rotated in March\n"
        "\n"
        f"bob:{BOB}, ops.team:with:colons#and-a-hash-inside\n"
    )
    assert parse_secrets(text, "secrets.txt") == {
        "alice": ALICE.encode(), "bob": BOB.encode(), "ops.team": b"with:colons#and-a-hash-inside"}


@pytest.mark.parametrize(
    "entry, secret, complaint",
    [
        ("alice" + ALICE, ALICE, "expected client_id:secret"),
        ("alice:", "", "expected client_id:secret"),
        (f"-alice:{ALICE}", ALICE, "expected a client id of 1 to 64 letters, digits, '.', '_' or '-' before the ':'"),
        (f"{ALICE}:bob", ALICE, "expected a secret of at least 16 bytes, got 3"),  # written the wrong way round
        ("alice:fifteen-bytes!!", "fifteen-bytes!!", "expected a secret of at least 16 bytes, got 15"),
        ("alice:half-a-secret other-half-of-it", "half-a-secret", "expected a secret without blanks"),
        (f"alice:{ALICE}, bob:{BOB}, alice:{SHARED}", SHARED, "the client of line 2 again: a client has one secret"),
    ],
)
def test_a_bad_entry_names_its_line_and_never_its_secret(entry, secret, complaint):
    with pytest.raises(PoseError) as info:
        parse_secrets(f"# a comment\n{entry}\n", "$S")
    assert (info.value.code, info.value.status, info.value.message) == ("callback_secrets_invalid", 500, f"$S, line 2: {complaint}")
    assert not secret or (secret not in str(info.value) and secret not in repr(info.value.__dict__))


def test_file_and_variable_together_and_their_errors(tmp_path):
    path = tmp_path / "callback-secrets"
    path.write_text(f"alice:{ALICE}\n")
    env = {"POSE_CALLBACK_SECRETS_FILE": str(path), "POSE_CALLBACK_SECRETS": f"bob:{BOB}"}
    assert SecretSources().load(env) == {"alice": ALICE.encode(), "bob": BOB.encode()}


@pytest.mark.parametrize(
    "content, variable, complaint",
    [
        (None, "", "cannot read the callback secrets file {path}: FileNotFoundError"),
        (b"# nobody yet\n", "", "the callback secrets file {path} holds no secrets"),
        (b"alice:" + ALICE.encode() + b"\xff\n", "", "the callback secrets file {path} is not UTF-8 text"),
        (f"alice:{ALICE}\n".encode(), f"alice:{SHARED}",
         "$POSE_CALLBACK_SECRETS and the file in $POSE_CALLBACK_SECRETS_FILE name one client: a client has one secret"),
    ],
)
def test_a_named_file_that_holds_no_usable_secrets_is_an_error(tmp_path, content, variable, complaint):
    """Named but missing, empty, not text, or naming a client the variable names too: never taken
    as "no secrets", which would sign with the shared secret instead."""
    path = tmp_path / "callback-secrets"
    if content is not None:
        path.write_bytes(content)
    env = {"POSE_CALLBACK_SECRETS_FILE": str(path), "POSE_CALLBACK_SECRETS": variable}
    with pytest.raises(PoseError) as info:
        SecretSources().load(env)
    assert info.value.code == "callback_secrets_invalid"
    assert info.value.message.startswith(complaint.format(path=path))
    assert ALICE not in info.value.message and SHARED not in info.value.message


ENV = {"POSE_CALLBACK_SECRETS": f"alice:{ALICE},bob:{BOB}", "POSE_CALLBACK_SECRET": SHARED}


@pytest.mark.parametrize(
    "client, environ, secret",
    [
        ("alice", ENV, ALICE.encode()),
        ("bob", ENV, BOB.encode()),
        ("carol", ENV, SHARED.encode()),  # no secret of her own: the shared one
        ("carol", {"POSE_CALLBACK_SECRETS": f"alice:{ALICE}"}, None),  # neither: unsigned
        (None, {"POSE_CALLBACK_SECRETS": "not an entry", "POSE_CALLBACK_SECRET": SHARED}, SHARED.encode()),
    ],
)
def test_each_client_is_signed_with_its_own_secret_else_the_shared_one(client, environ, secret):
    """The last case is the Ingress checking a URL: it reads no per-client secrets, so a
    malformed entry there cannot refuse an upload."""
    assert SecretSources().secret_for(client, environ) == secret


def test_the_variable_names_are_the_operators():
    sources = SecretSources(secrets_env="MY_SECRETS", secret_env="MY_SECRET")
    env = {"MY_SECRETS": f"alice:{ALICE}", "MY_SECRET": SHARED, **ENV}
    assert (sources.secret_for("alice", env), sources.secret_for("bob", env)) == (ALICE.encode(), SHARED.encode())


def test_alices_callback_verifies_with_her_secret_only(receiver_factory):
    """End to end: what reaches alice's receiver checks with her secret, not with bob's, not with
    the shared one; so bob, who knows his own and perhaps the shared one, cannot forge hers."""
    r = receiver_factory([204])
    policy = CallbackPolicy(allow_http=True, allow_hosts=("127.0.0.1",), secret=SecretSources().secret_for("alice", ENV))
    body = b'{"event":"job.succeeded","job":{"client":"alice"}}'
    assert post(f"http://127.0.0.1:{r.port}/hook", body, policy) == 204
    header = r.requests[0][1][SIGNATURE_HEADER]
    assert [verify(key.encode(), body, header) for key in (ALICE, BOB, SHARED)] == [True, False, False]


def test_a_client_without_any_secret_is_called_unsigned(receiver_factory):
    r = receiver_factory([204])
    secret = SecretSources().secret_for("carol", {"POSE_CALLBACK_SECRETS": f"alice:{ALICE}"})
    policy = CallbackPolicy(allow_http=True, allow_hosts=("127.0.0.1",), secret=secret)
    assert post(f"http://127.0.0.1:{r.port}/hook", b"{}", policy) == 204
    assert SIGNATURE_HEADER.lower() not in {name.lower() for name in r.requests[0][1]}


def test_the_policy_does_not_show_its_secret():
    assert ALICE not in repr(CallbackPolicy(secret=ALICE.encode()))
