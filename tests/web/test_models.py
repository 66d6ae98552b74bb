from __future__ import annotations

import pytest
from django.contrib.admin.sites import site
from django.contrib.auth.models import AnonymousUser
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.test import RequestFactory

from searches.models import Candidate, Core, HardwareProfile, Project, SearchRun

pytestmark = pytest.mark.django_db

PRESET_NAMES = {
    "Arduino Uno R3",
    "Arduino Nano 33 BLE Sense",
    "SparkFun Edge",
    "Raspberry Pi Pico",
    "Raspberry Pi Pico 2",
    "NUCLEO-F401RE",
    "NUCLEO-L476RG",
    "NUCLEO-G474RE",
    "STM32L4R9I-DISCO",
    "B-U585I-IOT02A",
    "STM32F746G-DISCO",
    "NUCLEO-H743ZI2",
    "nRF5340 DK (app core)",
    "ESP32-S3-DevKitC-1",
    "Teensy 4.0",
}


def _profile(owner, name="my board", **fields):
    values = {"core": Core.CORTEX_M4F, "clock_mhz": 80, "sram_kb": 64, "flash_kb": 256, **fields}
    return HardwareProfile.objects.create(owner=owner, name=name, **values)


def _run(owner, **fields):
    return SearchRun.objects.create(owner=owner, dataset="digits", budget=20, **fields)


# --- presets ----------------------------------------------------------------------------------


def test_the_fifteen_board_presets_are_loaded():
    presets = HardwareProfile.objects.presets()

    assert presets.count() == 15
    assert set(presets.values_list("name", flat=True)) == PRESET_NAMES
    assert all(p.owner_id is None and p.is_preset for p in presets)


def test_preset_figures_are_the_vendor_figures():
    uno = HardwareProfile.objects.get(name="Arduino Uno R3")
    teensy = HardwareProfile.objects.get(name="Teensy 4.0")

    assert (uno.mcu, uno.core, uno.clock_mhz, uno.sram_kb, uno.flash_kb) == ("ATmega328P", "avr", 16, 2, 32)
    assert (teensy.core, teensy.clock_mhz, teensy.sram_bytes, teensy.flash_bytes) == (
        "cortex-m7",
        600,
        1024 * 1024,
        2048 * 1024,
    )


def test_core_choices_are_the_engine_cores():
    from searches.engine.resources.latency import CORES

    assert set(Core.values) == set(CORES)
    assert set(HardwareProfile.objects.values_list("core", flat=True)) <= set(CORES)


def test_presets_are_read_only_in_admin(django_user_model):
    admin_user = django_user_model.objects.create_superuser(username="root", password="root-password")
    request = RequestFactory().get("/admin/")
    request.user = admin_user
    model_admin = site._registry[HardwareProfile]
    preset = HardwareProfile.objects.presets().first()
    own = _profile(admin_user)

    assert not model_admin.has_change_permission(request, preset)
    assert not model_admin.has_delete_permission(request, preset)
    assert model_admin.has_change_permission(request, own)
    assert model_admin.has_delete_permission(request, own)


def test_a_profile_is_either_a_preset_or_owned(user):
    with pytest.raises(IntegrityError), transaction.atomic():
        HardwareProfile.objects.create(
            owner=None, name="orphan", core=Core.AVR, clock_mhz=16, sram_kb=2, flash_kb=32
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        HardwareProfile.objects.create(
            owner=user,
            is_preset=True,
            name="fake preset",
            core=Core.AVR,
            clock_mhz=16,
            sram_kb=2,
            flash_kb=32,
        )


def test_every_model_is_registered_in_admin():
    for model in (Project, HardwareProfile, SearchRun, Candidate):
        assert model in site._registry


# --- owner filtering ----------------------------------------------------------------------------


def test_projects_for_user_checks_owner(user, other_user):
    mine = Project.objects.create(owner=user, name="kws")
    Project.objects.create(owner=other_user, name="kws")

    assert list(Project.objects.for_user(user)) == [mine]
    assert not Project.objects.for_user(AnonymousUser()).exists()


def test_profiles_for_user_are_own_plus_presets(user, other_user):
    mine = _profile(user)
    theirs = _profile(other_user)

    visible = HardwareProfile.objects.for_user(user)

    assert mine in visible
    assert theirs not in visible
    assert visible.filter(is_preset=True).count() == 15
    assert list(HardwareProfile.objects.owned_by(user)) == [mine]
    assert not HardwareProfile.objects.for_user(AnonymousUser()).exists()


def test_runs_for_user_checks_owner(user, other_user):
    mine = _run(user)
    _run(other_user)

    assert list(SearchRun.objects.for_user(user)) == [mine]
    assert not SearchRun.objects.for_user(AnonymousUser()).exists()


def test_candidates_for_user_follow_the_run_owner(user, other_user):
    mine = Candidate.objects.create(run=_run(user), index=0, architecture={})
    Candidate.objects.create(run=_run(other_user), index=0, architecture={})

    assert list(Candidate.objects.for_user(user)) == [mine]
    assert not Candidate.objects.for_user(AnonymousUser()).exists()


# --- runs and candidates --------------------------------------------------------------------------


def test_run_defaults(user):
    run = _run(user)

    assert run.status == SearchRun.Status.PENDING
    assert run.strategy == SearchRun.Strategy.AGING_EVOLUTION
    assert run.is_active
    assert (run.evaluated, run.config, run.state) == (0, {}, None)


def test_run_keeps_its_config_and_state_as_json(user):
    config = {"bounds": {"peak_sram_bytes": 2048, "flash_bytes": 4096}, "population": 10, "seed": 0}
    state = {"population": [1, 2, 3], "rng": {"bit_generator": "PCG64"}}
    run = _run(user, config=config, state=state)

    run.refresh_from_db()

    assert (run.config, run.state) == (config, state)


def test_candidate_index_is_unique_within_a_run(user):
    run = _run(user)
    Candidate.objects.create(run=run, index=0, architecture={})
    Candidate.objects.create(run=_run(user), index=0, architecture={})

    with pytest.raises(IntegrityError), transaction.atomic():
        Candidate.objects.create(run=run, index=0, architecture={})


def test_candidate_lineage(user):
    run = _run(user)
    parent = Candidate.objects.create(run=run, index=0, architecture={})
    child = Candidate.objects.create(run=run, index=1, architecture={}, parent=parent, mutation="filters +3")

    assert list(parent.children.all()) == [child]
    parent.delete()
    child.refresh_from_db()
    assert child.parent is None


def test_candidate_weights_are_stored_per_run(user):
    run = _run(user)
    candidate = Candidate.objects.create(run=run, index=0, architecture={})

    candidate.weights.save("candidate-0.safetensors", ContentFile(b"\x00" * 8))

    assert candidate.weights.name == f"weights/run-{run.pk}/candidate-0.safetensors"


def test_deleting_a_profile_keeps_its_runs(user):
    profile = _profile(user)
    run = _run(user, profile=profile)

    profile.delete()
    run.refresh_from_db()

    assert run.profile is None
