"""NASWEB_E2E_REDIS_DB: which Redis database the browser tests empty and use (no browser needed)."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import REDIS_DB, e2e_redis_db


def test_unset_or_blank_means_the_default_database() -> None:
    assert e2e_redis_db("") == REDIS_DB
    assert e2e_redis_db("  ") == REDIS_DB


def test_a_number_chooses_the_database() -> None:
    assert e2e_redis_db("12") == 12
    assert e2e_redis_db("0") == 0


@pytest.mark.parametrize("setting", ["twelve", "1.5", "-1"])
def test_anything_else_is_refused_by_name(setting: str) -> None:
    with pytest.raises(pytest.UsageError, match="NASWEB_E2E_REDIS_DB"):
        e2e_redis_db(setting)
