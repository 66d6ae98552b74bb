from __future__ import annotations

import json
import re

import pytest
from django.urls import reverse

from searches.engine.resources.graph import build_graph
from searches.engine.resources.latency import latency_ms
from searches.engine.space.arch import from_json
from searches.models import Candidate
from searches.templatetags.nasweb import ms
from tests.web.factories import SMALL_ARCH, architecture, conv, make_candidate, make_profile, make_run

pytestmark = pytest.mark.django_db

# 28x28x1 -> conv 3x3x8 (same) -> dense 100 -> logits 10, worked out by hand:
# activations: input 784 B + conv output 28*28*8 = 6,272 B live together -> peak 7,056 B;
# flash: conv 72 weights + 8*(4+4+1) = 144 B, dense0 627,200 + 100*9 = 628,100 B,
# logits 1,000 + 10*9 = 1,090 B -> 629,334 B (614.6 KB); MACs 56,448 + 627,200 + 1,000.
KNOWN_ARCH = architecture((28, 28, 1), [conv(8)], dense=[100])
KNOWN_PEAK, KNOWN_FLASH, KNOWN_MACS = 7_056, 629_334, 684_648
# Over 2 KB SRAM rules out the Uno; over 512 KB flash the Uno, NUCLEO-F401RE and NUCLEO-G474RE.
NOT_FITTING = {"Arduino Uno R3", "NUCLEO-F401RE", "NUCLEO-G474RE"}


def _fits(response) -> dict[str, bool]:
    return {fit.profile.name: fit.fits for fit in response.context["fits"]}


def test_it_works(client, user):
    run = make_run(user, profile=make_profile(user))
    parent = make_candidate(run, 0)
    candidate = make_candidate(run, 1, parent=parent, mutation="filters +3 in block 0")
    child = make_candidate(run, 2, parent=candidate)
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    assert response.status_code == 200
    body = response.content.decode()
    assert "90.0%" in body and "88.0%" in body  # val / test accuracy
    assert "estimated (calibrated model)" in body
    assert "filters +3 in block 0" in body
    assert reverse("candidate_detail", args=[parent.pk]) in body
    assert reverse("candidate_detail", args=[child.pk]) in body
    assert list(response.context["children"]) == [child]
    assert reverse("candidate_architecture", args=[candidate.pk]) in body


def test_it_shows_the_layer_table(client, user):
    candidate = make_candidate(make_run(user), architecture=KNOWN_ARCH)
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    layers = response.context["layers"]
    assert [(row["name"], row["op"], row["output_shape"]) for row in layers] == [
        ("b0l0_conv2d", "conv2d", "28x28x8"),
        ("dense0", "dense", "1x1x100"),
        ("logits", "dense", "1x1x10"),
    ]
    assert [row["flash_bytes"] for row in layers] == [144, 628_100, 1_090]
    assert sum(row["macs"] for row in layers) == KNOWN_MACS
    table = response.content.decode().split('id="layers"')[1].split("</table>")[0]
    assert "b0l0_conv2d" in table and "628,100" in table and "684,648" in table


def test_it_computes_the_fits_on_badges(client, user):
    candidate = make_candidate(make_run(user), architecture=KNOWN_ARCH)
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    report = response.context["report"]
    assert (report.peak_sram_bytes, report.flash_bytes, report.macs) == (KNOWN_PEAK, KNOWN_FLASH, KNOWN_MACS)
    fits = _fits(response)
    assert len(fits) == 15
    assert {name for name, ok in fits.items() if not ok} == NOT_FITTING
    by_name = {fit.profile.name: fit for fit in response.context["fits"]}
    assert not by_name["Arduino Uno R3"].fits_sram and not by_name["Arduino Uno R3"].fits_flash
    assert by_name["NUCLEO-F401RE"].fits_sram and not by_name["NUCLEO-F401RE"].fits_flash
    # Latency at each board's own core and clock, by the calibrated instruction model.
    graph = build_graph(from_json(KNOWN_ARCH))[0]
    uno, teensy = by_name["Arduino Uno R3"], by_name["Teensy 4.0"]
    assert uno.latency_ms == pytest.approx(latency_ms(graph, "avr", 16.0))
    assert teensy.latency_ms == pytest.approx(latency_ms(graph, "cortex-m7", 600.0))
    assert "uncalibrated" in uno.latency_label and teensy.latency_label == "estimated (calibrated model)"
    body = response.content.decode()
    badges = dict(re.findall(r'data-board="([^"]+)" data-fits="(yes|no)"', body))
    assert badges == {name: "yes" if ok else "no" for name, ok in fits.items()}
    assert "12 of 15 board presets" in body
    assert f"{ms(uno.latency_ms)} est." in body
    assert f"{ms(teensy.latency_ms)} est." in body


def test_a_small_model_fits_every_board(client, user):
    candidate = make_candidate(make_run(user))
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    assert all(_fits(response).values())


def test_it_embeds_the_memory_timeline(client, user):
    candidate = make_candidate(make_run(user), architecture=KNOWN_ARCH)
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    body = response.content.decode()
    memory = json.loads(body.split('id="memory-data" type="application/json">')[1].split("</script>")[0])
    assert memory["order"] == ["b0l0_conv2d", "dense0", "logits"]
    assert memory["default_order"] == ["b0l0_conv2d", "dense0", "logits"]
    assert memory["timeline"] == [7_056, 6_372, 110]
    assert memory["default_timeline"] == [7_056, 6_372, 110]
    assert memory["live_sets"][0] == ["input", "b0l0_conv2d"]
    assert memory["default_live_sets"] == memory["live_sets"]
    assert memory["tensor_bytes"] == {"input": 784, "b0l0_conv2d": 6_272, "dense0": 100, "logits": 10}
    assert 'id="memory-chart"' in body
    assert "js/plotly.min.js" in body and "js/candidate.js" in body


def test_the_c_header_button_is_disabled_without_trained_weights(client, user):
    candidate = make_candidate(make_run(user))  # done, but no weights file
    client.force_login(user)

    body = client.get(reverse("candidate_detail", args=[candidate.pk])).content.decode()

    button = re.search(r'<button[^>]*id="c-header"[^>]*>([^<]*)</button>', body)
    assert button is not None
    assert button.group(1) == "C header"
    assert "disabled" in button.group(0)
    assert "Exports need a trained candidate" in body
    assert reverse("candidate_header", args=[candidate.pk]) not in body


def test_it_shows_a_rejected_candidate(client, user):
    candidate = make_candidate(
        make_run(user),
        status=Candidate.Status.REJECTED,
        val_accuracy=None,
        test_accuracy=None,
        reject_reason="peak SRAM 7056 B exceeds the limit 2048 B",
    )
    client.force_login(user)

    response = client.get(reverse("candidate_detail", args=[candidate.pk]))

    assert response.status_code == 200
    assert "Rejected before training: peak SRAM 7056 B exceeds the limit 2048 B" in response.content.decode()


def test_it_checks_owner(client, user, other_user):
    candidate = make_candidate(make_run(other_user))
    client.force_login(user)

    assert client.get(reverse("candidate_detail", args=[candidate.pk])).status_code == 404
    assert client.get(reverse("candidate_architecture", args=[candidate.pk])).status_code == 404


def test_it_requires_login(client, user):
    candidate = make_candidate(make_run(user))

    assert client.get(reverse("candidate_detail", args=[candidate.pk])).status_code == 302
    assert client.get(reverse("candidate_architecture", args=[candidate.pk])).status_code == 302


def test_architecture_download_works(client, user):
    run = make_run(user)
    candidate = make_candidate(run, 3)
    client.force_login(user)

    response = client.get(reverse("candidate_architecture", args=[candidate.pk]))

    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert f'filename="run-{run.pk}-candidate-3.json"' in response["Content-Disposition"]
    assert json.loads(response.content) == SMALL_ARCH
