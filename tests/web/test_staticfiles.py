"""js/plotly.min.js comes from the installed plotly package, not a CDN and not a copy in the repository."""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles import finders
from django.core.management import call_command

from searches.staticfiles import PlotlyFinder, plotly_js_path


def test_it_finds_plotly_js():
    found = finders.find("js/plotly.min.js")

    assert Path(found) == plotly_js_path()
    assert Path(found).stat().st_size > 1_000_000


def test_it_finds_nothing_else():
    finder = PlotlyFinder()

    assert finder.find("js/other.js") == []
    assert finder.find("js/other.js", find_all=True) == []
    assert finder.find("js/plotly.min.js", find_all=True) == [str(plotly_js_path())]


def test_collectstatic_copies_it(settings, tmp_path):
    settings.STATIC_ROOT = tmp_path / "static"

    call_command("collectstatic", "--noinput", verbosity=0)

    copied = tmp_path / "static" / "js" / "plotly.min.js"
    assert copied.read_bytes() == plotly_js_path().read_bytes()


def test_the_check_passes():
    assert PlotlyFinder().check() == []
