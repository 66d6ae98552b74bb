from __future__ import annotations

import json

import pytest
from django.urls import reverse

from searches.models import HardwareProfile
from searches.services.runs import limits_for
from tests.web.factories import make_profile

pytestmark = pytest.mark.django_db

VALID = {
    "name": "Sensor node",
    "sram_kb": "48",
    "flash_kb": "200",
    "latency_ms": "50",
    "core": "cortex-m4f",
    "clock_mhz": "80",
    "notes": "",
}


def _preset(name: str = "NUCLEO-L476RG") -> HardwareProfile:
    return HardwareProfile.objects.presets().get(name=name)


# --- list ---------------------------------------------------------------------------------------


def test_list_works(client, user, other_user):
    make_profile(user, "Mine")
    make_profile(other_user, "Not mine")
    client.force_login(user)

    response = client.get(reverse("profile_list"))

    assert response.status_code == 200
    assert [p.name for p in response.context["own"]] == ["Mine"]
    assert len(response.context["presets"]) == 15
    body = response.content.decode()
    assert "Not mine" not in body
    assert "Copy to my profiles" in body
    assert "read-only" in body


def test_list_requires_login(client):
    response = client.get(reverse("profile_list"))

    assert response.status_code == 302
    assert response.url.startswith(reverse("login"))


# --- create -------------------------------------------------------------------------------------


def test_create_works(client, user):
    client.force_login(user)

    response = client.post(reverse("profile_create"), VALID)

    assert response.status_code == 302
    profile = HardwareProfile.objects.get(owner=user, name="Sensor node")
    assert (profile.sram_kb, profile.flash_kb, profile.latency_ms) == (48, 200, 50.0)
    assert (profile.core, profile.clock_mhz, profile.is_preset) == ("cortex-m4f", 80.0, False)
    assert profile.max_macs is None


def test_create_takes_a_macs_limit_and_a_run_inherits_it(client, user):
    client.force_login(user)

    client.post(reverse("profile_create"), {**VALID, "max_macs": "30000000"})
    bad = client.post(reverse("profile_create"), {**VALID, "name": "x", "max_macs": "0"})

    profile = HardwareProfile.objects.get(owner=user, name="Sensor node")
    assert profile.max_macs == 30_000_000
    assert "max_macs" in bad.context["form"].errors
    assert limits_for(profile).macs == 30_000_000
    assert limits_for(profile, max_macs=5).macs == 5


def test_create_form_offers_the_preset_picker(client, user):
    client.force_login(user)

    response = client.get(reverse("profile_create"))

    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="preset-picker"' in body
    presets = json.loads(body.split('id="preset-data" type="application/json">')[1].split("</script>")[0])
    assert len(presets) == 15
    uno = next(p for p in presets if p["name"] == "Arduino Uno R3")
    assert (uno["sram_kb"], uno["flash_kb"], uno["core"], uno["clock_mhz"]) == (2, 32, "avr", 16)


def test_create_prefills_from_a_preset(client, user):
    client.force_login(user)

    response = client.get(reverse("profile_create"), {"preset": _preset().pk})

    form = response.context["form"]
    assert form.initial["sram_kb"] == 128
    assert form.initial["core"] == "cortex-m4f"
    assert form.initial["name"] == "My NUCLEO-L476RG"


@pytest.mark.parametrize("preset", ["²", "x", "-1", ""])
def test_create_ignores_a_preset_that_is_not_an_id(client, user, preset):
    client.force_login(user)

    response = client.get(reverse("profile_create"), {"preset": preset})

    assert response.status_code == 200
    assert "sram_kb" not in response.context["form"].initial


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("sram_kb", "0", "Must be a positive number."),
        ("sram_kb", "-3", "Must be a positive number."),
        ("sram_kb", "9999999", "Must be at most 65,536 KB."),
        ("flash_kb", "abc", "Enter a whole number."),
        ("latency_ms", "-1", "Must be a positive number."),
        ("clock_mhz", "0", "Must be a positive number."),
        ("clock_mhz", "5000", "Must be at most 2,000 MHz."),
        ("core", "pentium", "Select a valid choice."),
        ("name", "", "This field is required."),
    ],
)
def test_create_shows_field_errors(client, user, field, value, message):
    client.force_login(user)

    response = client.post(reverse("profile_create"), {**VALID, field: value})

    assert response.status_code == 200
    errors = response.context["form"].errors[field]
    assert any(message in e for e in errors), errors
    assert message.replace("'", "&#x27;") in response.content.decode()
    assert not HardwareProfile.objects.owned_by(user).exists()


def test_create_rejects_a_duplicate_name(client, user):
    make_profile(user, "Sensor node")
    client.force_login(user)

    response = client.post(reverse("profile_create"), VALID)

    assert response.status_code == 200
    assert response.context["form"].errors["name"] == ["You already have a profile with this name."]


def test_create_allows_a_name_another_user_has(client, user, other_user):
    make_profile(other_user, "Sensor node")
    client.force_login(user)

    response = client.post(reverse("profile_create"), VALID)

    assert response.status_code == 302
    assert HardwareProfile.objects.owned_by(user).filter(name="Sensor node").exists()


def test_create_requires_login(client):
    response = client.post(reverse("profile_create"), VALID)

    assert response.status_code == 302
    assert not HardwareProfile.objects.filter(name="Sensor node").exists()


# --- edit ---------------------------------------------------------------------------------------


def test_edit_works(client, user):
    profile = make_profile(user, "Old name")
    client.force_login(user)

    response = client.post(reverse("profile_edit", args=[profile.pk]), {**VALID, "name": "New name"})

    assert response.status_code == 302
    profile.refresh_from_db()
    assert (profile.name, profile.sram_kb) == ("New name", 48)


def test_edit_keeps_its_own_name(client, user):
    profile = make_profile(user, "Sensor node")
    client.force_login(user)

    response = client.post(reverse("profile_edit", args=[profile.pk]), VALID)

    assert response.status_code == 302


def test_edit_checks_owner(client, user, other_user):
    profile = make_profile(other_user, "Bob's")
    client.force_login(user)

    assert client.get(reverse("profile_edit", args=[profile.pk])).status_code == 404
    assert client.post(reverse("profile_edit", args=[profile.pk]), VALID).status_code == 404
    profile.refresh_from_db()
    assert profile.name == "Bob's"


def test_edit_refuses_presets(client, user):
    client.force_login(user)

    response = client.post(reverse("profile_edit", args=[_preset().pk]), VALID)

    assert response.status_code == 404
    assert _preset().sram_kb == 128


def test_edit_requires_login(client, user):
    profile = make_profile(user)

    response = client.get(reverse("profile_edit", args=[profile.pk]))

    assert response.status_code == 302


# --- delete -------------------------------------------------------------------------------------


def test_delete_works(client, user):
    profile = make_profile(user)
    client.force_login(user)

    response = client.post(reverse("profile_delete", args=[profile.pk]))

    assert response.status_code == 302
    assert not HardwareProfile.objects.filter(pk=profile.pk).exists()


def test_delete_rejects_get(client, user):
    profile = make_profile(user)
    client.force_login(user)

    assert client.get(reverse("profile_delete", args=[profile.pk])).status_code == 405
    assert HardwareProfile.objects.filter(pk=profile.pk).exists()


def test_delete_checks_owner(client, user, other_user):
    profile = make_profile(other_user)
    client.force_login(user)

    assert client.post(reverse("profile_delete", args=[profile.pk])).status_code == 404
    assert client.post(reverse("profile_delete", args=[_preset().pk])).status_code == 404
    assert HardwareProfile.objects.filter(pk=profile.pk).exists()
    assert HardwareProfile.objects.presets().count() == 15


def test_delete_requires_login(client, user):
    profile = make_profile(user)

    assert client.post(reverse("profile_delete", args=[profile.pk])).status_code == 302
    assert HardwareProfile.objects.filter(pk=profile.pk).exists()


# --- copy ---------------------------------------------------------------------------------------


def test_copy_of_a_preset_works(client, user):
    preset = _preset()
    client.force_login(user)

    response = client.post(reverse("profile_copy", args=[preset.pk]))

    copy = HardwareProfile.objects.get(owner=user)
    assert response.status_code == 302
    assert response.url == reverse("profile_edit", args=[copy.pk])
    assert copy.name == "NUCLEO-L476RG (copy)"
    assert not copy.is_preset
    fields = ("mcu", "core", "clock_mhz", "sram_kb", "flash_kb")
    assert [getattr(copy, f) for f in fields] == [getattr(preset, f) for f in fields]


def test_copy_makes_the_name_unique(client, user):
    client.force_login(user)

    for _ in range(3):
        client.post(reverse("profile_copy", args=[_preset().pk]))

    names = sorted(HardwareProfile.objects.owned_by(user).values_list("name", flat=True))
    assert names == ["NUCLEO-L476RG (copy 2)", "NUCLEO-L476RG (copy 3)", "NUCLEO-L476RG (copy)"]


def test_copy_checks_owner(client, user, other_user):
    profile = make_profile(other_user)
    client.force_login(user)

    assert client.post(reverse("profile_copy", args=[profile.pk])).status_code == 404
    assert not HardwareProfile.objects.owned_by(user).exists()


def test_copy_rejects_get(client, user):
    client.force_login(user)

    assert client.get(reverse("profile_copy", args=[_preset().pk])).status_code == 405


def test_copy_requires_login(client):
    assert client.post(reverse("profile_copy", args=[_preset().pk])).status_code == 302
    assert HardwareProfile.objects.filter(is_preset=False).count() == 0
