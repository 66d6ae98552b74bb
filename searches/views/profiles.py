"""Hardware profiles: the user's own (editable) and the board presets (read-only, copyable)."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from searches.forms import HardwareProfileForm
from searches.models import HardwareProfile

# Fields a copy of a profile takes over; the name gets made unique separately.
COPIED_FIELDS = (
    "board",
    "mcu",
    "core",
    "clock_mhz",
    "sram_kb",
    "flash_kb",
    "latency_ms",
    "max_macs",
    "notes",
)


def _get_profile_for_user(request: HttpRequest, pk: int) -> HardwareProfile:
    """A profile the user may see: one of theirs or a preset."""
    return get_object_or_404(HardwareProfile.objects.for_user(request.user), pk=pk)


def _get_own_profile_for_user(request: HttpRequest, pk: int) -> HardwareProfile:
    """A profile the user may change: presets and other users' profiles are 404s."""
    return get_object_or_404(HardwareProfile.objects.owned_by(request.user), pk=pk)


def _preset_data() -> list[dict[str, Any]]:
    """The presets as the profile form's picker fills them in."""
    return [
        {
            "id": p.pk,
            "name": p.name,
            "sram_kb": p.sram_kb,
            "flash_kb": p.flash_kb,
            "core": p.core,
            "clock_mhz": p.clock_mhz,
            "notes": p.notes or f"{p.mcu} ({p.board})",
        }
        for p in HardwareProfile.objects.presets()
    ]


def _copy_name(owner: Any, base: str) -> str:
    """ "<base> (copy)", then "(copy 2)"…: a copy never looks like the preset it came from."""
    taken = set(HardwareProfile.objects.owned_by(owner).values_list("name", flat=True))
    name, n = f"{base} (copy)", 2
    while name in taken:
        name, n = f"{base} (copy {n})", n + 1
    return name


@login_required
def profile_list(request: HttpRequest) -> HttpResponse:
    profiles = HardwareProfile.objects.for_user(request.user)
    ctx = {
        "own": [p for p in profiles if not p.is_preset],
        "presets": [p for p in profiles if p.is_preset],
    }
    return render(request, "searches/profile_list.html", ctx)


def _render_form(
    request: HttpRequest, form: HardwareProfileForm, profile: HardwareProfile | None
) -> HttpResponse:
    ctx = {"form": form, "profile": profile, "presets": _preset_data()}
    return render(request, "searches/profile_form.html", ctx)


@login_required
def profile_create(request: HttpRequest) -> HttpResponse:
    initial = {}
    preset_id = request.GET.get("preset", "")
    if preset_id.isascii() and preset_id.isdigit():  # "²".isdigit() is true too
        source = _get_profile_for_user(request, int(preset_id))
        initial = {f: getattr(source, f) for f in COPIED_FIELDS} | {"name": f"My {source.name}"}
    form = HardwareProfileForm(request.POST or None, owner=request.user, initial=initial)
    if request.method == "POST" and form.is_valid():
        profile = form.save()
        messages.success(request, f"Profile “{profile.name}” created.")
        return redirect("profile_list")
    return _render_form(request, form, None)


@login_required
def profile_edit(request: HttpRequest, pk: int) -> HttpResponse:
    profile = _get_own_profile_for_user(request, pk)
    form = HardwareProfileForm(request.POST or None, instance=profile, owner=request.user)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, f"Profile “{profile.name}” saved.")
        return redirect("profile_list")
    return _render_form(request, form, profile)


@login_required
@require_POST
def profile_delete(request: HttpRequest, pk: int) -> HttpResponse:
    profile = _get_own_profile_for_user(request, pk)
    profile.delete()
    messages.success(request, f"Profile “{profile.name}” deleted; runs that used it keep their budgets.")
    return redirect("profile_list")


@login_required
@require_POST
def profile_copy(request: HttpRequest, pk: int) -> HttpResponse:
    """Copy a preset (or one of the user's profiles) into an editable profile of the user."""
    source = _get_profile_for_user(request, pk)
    copy = HardwareProfile.objects.create(
        owner=request.user,
        name=_copy_name(request.user, source.name),
        **{f: getattr(source, f) for f in COPIED_FIELDS},
    )
    messages.success(request, f"Copied “{source.name}” to your profiles; adjust its budget here.")
    return redirect("profile_edit", pk=copy.pk)
