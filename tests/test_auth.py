"""Client keys (`service.auth`), the ``keys new`` command, and the builder's refusal to serve a
network without them. The served checks (two clients' jobs kept apart, 401s) are in
tests/test_serve_video.py and tests/test_serve_app.py, on the applications those modules start."""

from __future__ import annotations

import hashlib
import json
import logging
import os

import pytest

import service.auth as auth
from pipeline.errors import PoseError
from service.auth import Client, ClientKey, KeyRing, KeySources, LiveKeys, check_exposure, is_loopback, parse_keys


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _new_key(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    from service.cli import main

    assert main(["keys", "new", *argv]) == 0
    return json.loads(capsys.readouterr().out)


# --- keys new -----------------------------------------------------------------------------------


def test_keys_new_prints_a_fresh_key_once_and_the_line_that_accepts_it(capsys, caplog):
    caplog.set_level(logging.DEBUG)
    first = _new_key(capsys, "alice")
    second = _new_key(capsys, "ops", "--admin")
    assert first["key"] != second["key"]
    assert first["key"].startswith("psk_") and len(first["key"]) >= 4 + 43  # 256 random bits, base64url
    assert first["line"] == f"alice:{_digest(first['key'])}"
    assert second["line"] == f"ops:{_digest(second['key'])}:admin"
    ring = KeyRing(parse_keys(first["line"] + "\n" + second["line"] + "\n", "keys"))
    assert ring.authenticate(first["key"]) == Client("alice", admin=False)
    assert ring.authenticate(second["key"]) == Client("ops", admin=True)
    assert first["key"] not in caplog.text and second["key"] not in caplog.text


def test_keys_new_refuses_a_client_id_that_a_keys_file_could_not_hold(capsys):
    from service.cli import main

    for bad in ("two words", "a:b", "", "-lead", "x" * 65):
        assert main(["keys", "new", "--", bad]) == 2
        assert json.loads(capsys.readouterr().out)["error"]["code"] == "client_id_invalid"


# --- keys files -----------------------------------------------------------------------------------


def test_lines_and_json_give_the_same_keys():
    a, b = _digest("key-a"), _digest("key-b")
    lines = f"# clients\n\nalice:{a}   # the web backend\nops:{b.upper()}:admin\n"
    listed = [{"client": "alice", "sha256": a}, {"client": "ops", "sha256": b, "admin": True}]
    want = [ClientKey("alice", bytes.fromhex(a), False), ClientKey("ops", bytes.fromhex(b), True)]
    assert parse_keys(lines, "f") == want
    assert parse_keys(json.dumps(listed), "f") == want
    assert parse_keys(json.dumps({"keys": listed}), "f") == want
    assert parse_keys(f"alice:{a}, ops:{b}:admin", "$POSE_SERVICE_KEYS") == want  # several in one variable


@pytest.mark.parametrize(
    "text, where",
    [
        ("alice:" + "0" * 63, "line 1"),  # too short to be a SHA-256
        ("\n\nalice:" + "g" * 64, "line 3"),
        ("alice:" + "0" * 64 + ":root", "line 1"),
        ("al ice:" + "0" * 64, "line 1"),
        ("alice", "line 1"),
        ('[{"client": "alice"}]', "entry 0"),
        ('[{"client": "alice", "sha256": "' + "0" * 64 + '", "admin": "yes"}]', "entry 0"),
        ('{"clients": []}', "keys.txt"),
        ("[1, 2", "keys.txt"),
    ],
)
def test_a_malformed_entry_is_refused_with_where_it_is(text, where):
    with pytest.raises(PoseError) as err:
        parse_keys(text, "keys.txt")
    assert err.value.code == "auth_keys_invalid"
    assert err.value.message.startswith("keys.txt") and where in err.value.message
    assert "0" * 63 not in err.value.message and "g" * 64 not in err.value.message  # digests are not echoed


def test_one_key_for_two_clients_is_refused_but_one_client_may_have_two_keys():
    d = bytes.fromhex(_digest("shared"))
    with pytest.raises(PoseError) as err:
        KeyRing([ClientKey("alice", d, False), ClientKey("bob", d, False)])
    assert err.value.code == "auth_keys_invalid"
    ring = KeyRing([ClientKey("alice", bytes.fromhex(_digest("old")), False), ClientKey("alice", bytes.fromhex(_digest("new")), False)])
    assert ring.authenticate("old") == ring.authenticate("new") == Client("alice")  # rotation: both work
    assert ring.clients == ["alice"]


def test_authentication_compares_every_entry_in_constant_time(monkeypatch):
    keys = [ClientKey(f"c{i}", bytes.fromhex(_digest(f"key-{i}")), False) for i in range(5)]
    ring = KeyRing(keys)
    calls: list[tuple[bytes, bytes]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented, want in [("key-0", Client("c0")), ("key-4", Client("c4")), ("nope", None), ("", None)]:
        calls.clear()
        assert ring.authenticate(presented) == want
        # all five digests, whichever matched: no early exit; and only digests are compared
        assert len(calls) == len(keys) and all(len(a) == len(b) == 32 for a, b in calls)
    assert ring.authenticate(_digest("key-0")) is None  # the digest a file holds is not a key


def test_sources_read_the_file_the_variable_and_the_old_token(tmp_path):
    path = tmp_path / "keys.txt"
    path.write_text(f"alice:{_digest('a')}\n")
    env = {
        "POSE_SERVICE_KEYS_FILE": str(path),
        "POSE_SERVICE_KEYS": f"bob:{_digest('b')}",
        "POSE_SERVICE_TOKEN": "the-old-token",
    }
    ring = KeySources().load(env)
    assert len(ring) == 3 and ring.clients == ["alice", "bob", "default"]
    assert ring.authenticate("a") == Client("alice")
    assert ring.authenticate("b") == Client("bob")
    assert ring.authenticate("the-old-token") == Client("default", admin=True)  # as before: one admin
    assert len(KeySources().load({"POSE_SERVICE_KEYS": " ", "POSE_SERVICE_TOKEN": ""})) == 0  # set but empty: none
    assert len(KeySources(file=str(path)).load({})) == 1  # the setting, without the variable


@pytest.mark.parametrize("content", [None, "", "# nothing but a comment\n", b"\xff\xfe"])
def test_a_named_keys_file_that_holds_no_keys_is_an_error(tmp_path, content):
    path = tmp_path / "keys.txt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(PoseError) as err:
        KeySources(file=str(path)).load({})
    assert err.value.code == "auth_keys_invalid" and str(path) in err.value.message


def test_a_changed_keys_file_is_read_again_and_a_broken_change_keeps_the_keys(tmp_path, caplog):
    path = tmp_path / "keys.txt"
    path.write_text(f"alice:{_digest('a1')}\n")
    now = [0.0]
    live = LiveKeys(KeySources(file=str(path)), environ={}, check_every_s=5.0, clock=lambda: now[0])
    assert live.current().authenticate("a1") == Client("alice")
    path.write_text(f"alice:{_digest('a2')}\nbob:{_digest('b')}\n")  # a1 revoked, a2 and bob added
    os.utime(path, ns=(10**18, 10**18))  # a distinct modification time, however coarse the clock
    now[0] = 4.0
    assert live.current().authenticate("a2") is None  # not looked at yet: once every 5 s
    now[0] = 5.5
    ring = live.current()
    assert ring.authenticate("a1") is None and ring.authenticate("a2") == Client("alice") and ring.authenticate("b") == Client("bob")
    path.write_text("alice:not-a-digest\n")
    os.utime(path, ns=(2 * 10**18, 2 * 10**18))
    now[0] = 11.0
    with caplog.at_level(logging.ERROR, logger="service.auth"):
        kept = live.current()
    assert kept.authenticate("b") == Client("bob")
    assert "keys in force stay" in caplog.text and "line 1" in caplog.text and _digest("b") not in caplog.text


# --- exposure -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host, loopback",
    [
        ("127.0.0.1", True), ("127.8.9.10", True), ("::1", True), ("[::1]", True), ("localhost", True), (None, True),
        ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("192.168.1.2", False),
        ("example.org", False), ("localhost.example.org", False),
    ],
)
def test_which_listen_addresses_are_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_a_network_address_needs_keys_or_an_explicit_auth_none():
    with pytest.raises(PoseError) as err:
        check_exposure("0.0.0.0", "keys", 0)
    assert err.value.code == "auth_required" and "'0.0.0.0'" in err.value.message and "auth: none" in err.value.message
    check_exposure("0.0.0.0", "keys", 1)
    check_exposure("127.0.0.1", "keys", 0)
    check_exposure("0.0.0.0", "none", 0)
    with pytest.raises(PoseError) as err:
        check_exposure("127.0.0.1", "none", 2)
    assert err.value.code == "auth_conflict"


def test_the_builder_refuses_a_network_address_without_keys(tmp_path, monkeypatch, caplog):
    """A real Serve instance listening on every interface (no application deployed on it):
    building the application without a key stops with one message; with the old token, or with
    ``auth: none`` said explicitly, it builds, the latter with a warning."""
    pytest.importorskip("ray.serve")
    import ray
    from ray import serve
    from serve_helpers import free_port

    from deployments.app import AppArgs, build_app

    for name in ("POSE_SERVICE_TOKEN", "POSE_SERVICE_KEYS", "POSE_SERVICE_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    args = {"profile": "tiny", "tiny_dir": str(tmp_path / "tiny"), "data_dir": str(tmp_path / "data"), "tracker": False}
    ray.init(address="local", num_cpus=1, include_dashboard=False)
    try:
        serve.start(http_options={"host": "0.0.0.0", "port": free_port()})
        with pytest.raises(PoseError) as err:
            build_app(AppArgs(**args))
        assert err.value.code == "auth_required" and "'0.0.0.0'" in err.value.message
        keys = tmp_path / "keys.txt"
        keys.write_text("")
        with pytest.raises(PoseError) as err:  # a keys file that holds nothing is no way out
            build_app(AppArgs(**args, auth_keys_file=str(keys)))
        assert err.value.code == "auth_keys_invalid"
        monkeypatch.setenv("POSE_SERVICE_TOKEN", "old-single-token")
        assert build_app(AppArgs(**args)) is not None
        with pytest.raises(PoseError) as err:  # a key and "no authentication" at once: which was meant?
            build_app(AppArgs(**args, auth="none"))
        assert err.value.code == "auth_conflict"
        monkeypatch.delenv("POSE_SERVICE_TOKEN")
        with caplog.at_level(logging.WARNING, logger="deployments.app"):
            assert build_app(AppArgs(**args, auth="none")) is not None
        assert "auth: none" in caplog.text
    finally:
        serve.shutdown()
        ray.shutdown()


def test_an_ingress_replica_that_must_have_keys_and_finds_none_does_not_start(monkeypatch, caplog):
    """The builder saw keys, but this replica's node has none (a variable set on the head only):
    it stops instead of serving everyone. ``auth: none`` starts and says so."""
    pytest.importorskip("ray.serve")
    from service.api.context import auth_mode, replica_keys
    from service.settings import ApiSettings

    for name in ("POSE_SERVICE_TOKEN", "POSE_SERVICE_KEYS", "POSE_SERVICE_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(PoseError) as err:
        replica_keys(ApiSettings(profile="tiny", require_keys=True))
    assert err.value.code == "auth_required"
    assert auth_mode(replica_keys(ApiSettings(profile="tiny"))) == "loopback_only"
    with caplog.at_level(logging.WARNING, logger="service.api.context"):
        assert replica_keys(ApiSettings(profile="tiny", auth="none")) is None
    assert auth_mode(None) == "none" and "auth: none" in caplog.text
    monkeypatch.setenv("POSE_SERVICE_KEYS", f"alice:{_digest('a')}")
    assert auth_mode(replica_keys(ApiSettings(profile="tiny", require_keys=True))) == "keys"


def test_the_preflight_of_serve_sh_refuses_the_same_config_with_one_message(tmp_path, monkeypatch, caplog):
    """``serve run serve_config.yaml`` builds inside the Serve controller and keeps running when
    the builder refuses; scripts/serve.sh runs this check first, on the same file."""
    pytest.importorskip("ray.serve")
    import yaml
    from conftest import REPO

    from deployments.preflight import main

    for name in ("POSE_SERVICE_TOKEN", "POSE_SERVICE_KEYS", "POSE_SERVICE_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POSE_SERVICE_PROFILE", "tiny")  # the keys alone: the model files are tests/test_fail_fast.py's
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    assert config["http_options"]["host"] == "127.0.0.1"  # the shipped default: loopback
    assert main([str(REPO / "serve_config.yaml")]) == 0
    config["http_options"]["host"] = "0.0.0.0"
    opened = tmp_path / "open.yaml"
    opened.write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.ERROR, logger="deployments.preflight"):
        assert main([str(opened)]) == 2
    (record,) = [r for r in caplog.records if r.name == "deployments.preflight"]
    assert "auth_required" in record.getMessage() and "'0.0.0.0'" in record.getMessage()
    keys = tmp_path / "keys.txt"
    keys.write_text(f"alice:{_digest('a')}\n")
    monkeypatch.setenv("POSE_SERVICE_KEYS_FILE", str(keys))
    assert main([str(opened)]) == 0
