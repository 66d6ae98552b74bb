"""Serve the installed plotly package's ``plotly.min.js`` as the static file ``js/plotly.min.js``.

No CDN and no copy in the repository: the browser gets exactly the plotly.js that the pinned
Python package ships, in development (runserver, WhiteNoise with DEBUG) and after collectstatic.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

STATIC_PATH = "js/plotly.min.js"


def plotly_js_path() -> Path:
    return Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"


class PlotlyFinder(BaseFinder):
    """A staticfiles finder that knows exactly one file."""

    def check(self, **kwargs: Any) -> list[Error]:
        if plotly_js_path().is_file():
            return []
        missing = f"plotly.min.js is missing from the plotly package ({plotly_js_path()})"
        return [Error(missing, id="nasweb.E001")]

    def find(self, path: str, find_all: bool = False, **kwargs: Any) -> str | list[str]:
        if kwargs:  # the pre-5.2 spelling ``all=``
            find_all = self._check_deprecated_find_param(find_all=find_all, **kwargs)
        source = plotly_js_path()
        matches = [str(source)] if path == STATIC_PATH and source.is_file() else []
        if find_all:
            return matches
        return matches[0] if matches else []

    def list(self, ignore_patterns: Any) -> Iterator[tuple[str, FileSystemStorage]]:
        source = plotly_js_path()
        if not source.is_file():
            return
        storage = FileSystemStorage(location=source.parent)
        # collectstatic and WhiteNoise put a storage's files under its ``prefix``.
        storage.prefix = str(Path(STATIC_PATH).parent)  # type: ignore[attr-defined]
        yield source.name, storage
