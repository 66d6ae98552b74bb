"""Production settings from the environment: ``check --deploy`` in a real process, and each override."""

from __future__ import annotations

import os
import runpy
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from channels_redis.core import RedisChannelLayer

REPO = Path(__file__).resolve().parents[2]
SETTINGS = REPO / "nasweb" / "settings.py"
HTTPS_WARNINGS = {"security.W004", "security.W008", "security.W012", "security.W016"}


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NASWEB_", "SECURE_"))}
    return env | {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "example.org",
        "NASWEB_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "nasweb.settings",
        **extra,
    }


def _check_deploy(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def _settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, **env: str) -> dict[str, Any]:
    """nasweb/settings.py evaluated afresh under ``env`` (the test process's settings stay as they are)."""
    for key in [k for k in os.environ if k.startswith("NASWEB_")]:
        monkeypatch.delenv(key)
    for key, value in {"NASWEB_DATA_DIR": str(tmp_path), **env}.items():
        monkeypatch.setenv(key, value)
    return runpy.run_path(str(SETTINGS))


@pytest.mark.slow
def test_check_deploy_passes_with_https_on(tmp_path):
    result = _check_deploy(_production_env(tmp_path, NASWEB_HTTPS="true"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.slow
def test_check_deploy_warns_without_https(tmp_path):
    result = _check_deploy(_production_env(tmp_path))
    assert result.returncode != 0
    assert all(code in result.stderr for code in HTTPS_WARNINGS), result.stderr


def test_https_turns_on_the_secure_set(monkeypatch, tmp_path):
    s = _settings(monkeypatch, tmp_path, NASWEB_HTTPS="true")
    assert s["SECURE_SSL_REDIRECT"] and s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] == 31_536_000
    assert s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] and s["SECURE_HSTS_PRELOAD"]
    assert s["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_it_is_all_off_by_default(monkeypatch, tmp_path):
    s = _settings(monkeypatch, tmp_path)
    assert not (s["SECURE_SSL_REDIRECT"] or s["SESSION_COOKIE_SECURE"] or s["CSRF_COOKIE_SECURE"])
    assert s["SECURE_HSTS_SECONDS"] == 0 and "SECURE_PROXY_SSL_HEADER" not in s


def test_each_part_has_its_own_override(monkeypatch, tmp_path):
    s = _settings(
        monkeypatch,
        tmp_path,
        NASWEB_HTTPS="true",
        NASWEB_SSL_REDIRECT="false",
        NASWEB_HSTS_SECONDS="3600",
        NASWEB_HSTS_INCLUDE_SUBDOMAINS="false",
        NASWEB_HSTS_PRELOAD="false",
        NASWEB_TRUST_X_FORWARDED_PROTO="false",
    )
    assert not s["SECURE_SSL_REDIRECT"] and s["SESSION_COOKIE_SECURE"]
    assert s["SECURE_HSTS_SECONDS"] == 3600
    assert not s["SECURE_HSTS_INCLUDE_SUBDOMAINS"] and not s["SECURE_HSTS_PRELOAD"]
    assert "SECURE_PROXY_SSL_HEADER" not in s
    s = _settings(monkeypatch, tmp_path, NASWEB_SECURE_COOKIES="true", NASWEB_TRUST_X_FORWARDED_PROTO="1")
    assert s["SESSION_COOKIE_SECURE"] and s["CSRF_COOKIE_SECURE"] and not s["SECURE_SSL_REDIRECT"]
    assert s["SECURE_PROXY_SSL_HEADER"] == ("HTTP_X_FORWARDED_PROTO", "https")


def test_csrf_trusted_origins_come_from_the_environment(monkeypatch, tmp_path):
    s = _settings(
        monkeypatch, tmp_path, CSRF_TRUSTED_ORIGINS="https://nas.example.org, https://example.org:8443"
    )
    assert s["CSRF_TRUSTED_ORIGINS"] == ["https://nas.example.org", "https://example.org:8443"]


def test_the_channel_layer_outlasts_its_own_blocking_read(monkeypatch, tmp_path):
    """The socket timeout must be longer than channels_redis's blocking read, or idle sockets die."""
    s = _settings(monkeypatch, tmp_path, REDIS_URL="redis://127.0.0.1:6379/3")
    (host,) = s["CHANNEL_LAYERS"]["default"]["CONFIG"]["hosts"]
    assert host["address"] == "redis://127.0.0.1:6379/3"
    assert host["socket_timeout"] >= 2 * RedisChannelLayer.brpop_timeout
