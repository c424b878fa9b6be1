"""The API's pure logic: roles, key format and hashing, page limits, settings."""

from __future__ import annotations

import hashlib
from typing import get_args

import pytest
from fastapi.exceptions import RequestValidationError

from libs.db.apikeys import KEY_LENGTH, ROLES, hash_key, looks_like_key, new_plaintext
from libs.http.auth import GRANTS, allowed
from services.api.config import ApiLimits, ApiSettings
from services.api.routes import page_limit
from services.api.schemas import Role


@pytest.mark.parametrize(
    ("role", "read", "imports", "keys"),
    [
        ("clinician", True, False, False),
        ("ops", True, True, False),
        ("admin", True, True, True),
        ("unknown", False, False, False),
        ("", False, False, False),
    ],
)
def test_role_grants(role, read, imports, keys):
    assert [allowed(role, p) for p in ("read", "imports", "keys")] == [read, imports, keys]


def test_roles_agree_everywhere():
    assert set(get_args(Role)) == set(ROLES) == set(GRANTS)


def test_admin_holds_every_permission():
    assert GRANTS["admin"] == set().union(*GRANTS.values())


def test_new_keys_are_well_formed_and_distinct():
    made = {new_plaintext() for _ in range(200)}
    assert len(made) == 200
    for key in made:
        assert key.startswith("dfk_") and len(key) == KEY_LENGTH == 47
        assert looks_like_key(key)


@pytest.mark.parametrize(
    "candidate",
    [
        "",
        "dfk_",
        "dfk_short",
        "xyz_" + "a" * 43,
        "dfk_" + "a" * 44,
        "dfk_" + "a" * 42 + "/",
        "dfk_" + "é" * 43,
        "dfk_" + "a" * 42 + "\x00",
    ],
)
def test_malformed_keys_never_reach_the_database(candidate):
    assert not looks_like_key(candidate)


def test_key_hash_is_sha256_hex():
    key = new_plaintext()
    assert hash_key(key) == hashlib.sha256(key.encode()).hexdigest()
    assert len(hash_key(key)) == 64


def test_page_limit_defaults_and_bounds():
    limits = ApiLimits(default_page_size=20, max_page_size=100)
    assert page_limit(None, limits) == 20
    assert page_limit(100, limits) == 100
    with pytest.raises(RequestValidationError) as caught:
        page_limit(101, limits)
    assert caught.value.errors()[0]["loc"] == ("query", "limit")


def test_api_host_and_port_are_the_ops_host_and_port(monkeypatch):
    monkeypatch.setenv("API_HOST", "0.0.0.0")
    monkeypatch.setenv("API_PORT", "8080")
    monkeypatch.setenv("API_MAX_PAGE_SIZE", "200")
    settings = ApiSettings()
    assert (settings.ops_host, settings.ops_port) == ("0.0.0.0", 8080)
    assert settings.limits().max_page_size == 200
    assert (ApiSettings().port, ApiSettings(port=0).ops_port) == (8080, 0)


def test_defaults(monkeypatch):
    for name in ("API_HOST", "API_PORT"):
        monkeypatch.delenv(name, raising=False)
    settings = ApiSettings()
    assert (settings.host, settings.port, settings.ops_port) == ("127.0.0.1", 8000, 8000)
    assert settings.limits() == ApiLimits()


def test_default_page_size_may_not_exceed_the_maximum():
    with pytest.raises(ValueError, match="API_DEFAULT_PAGE_SIZE"):
        ApiSettings(default_page_size=300, max_page_size=100)
