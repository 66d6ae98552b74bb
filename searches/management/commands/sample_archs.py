"""``manage.py sample_archs``: print valid random architectures of the μNAS space as JSON."""

from __future__ import annotations

import json
import random
import re
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from searches.engine.space.sampling import SpaceConfig, random_architecture


def parse_shape(text: str) -> tuple[int, int, int]:
    """'28x28x1' -> (28, 28, 1)."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*x\s*(\d+)\s*", text)
    if not match or min(int(g) for g in match.groups()) < 1:
        raise CommandError(f"--input must look like HxWxC with positive numbers, e.g. 28x28x1 (got {text!r})")
    h, w, c = (int(g) for g in match.groups())
    return h, w, c


class Command(BaseCommand):
    help = "Print a JSON list of valid random architectures (every parameter drawn over its full range)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--count", type=int, required=True)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--input", default="28x28x1", help="input shape HxWxC (default 28x28x1)")
        parser.add_argument("--classes", type=int, default=10)
        parser.add_argument("--max-ops", type=int, default=None, help="at most this many operators per graph")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["count"] < 1:
            raise CommandError("--count must be at least 1")
        if options["classes"] < 2:
            raise CommandError("--classes must be at least 2")
        if options["max_ops"] is not None and options["max_ops"] < 2:
            raise CommandError("--max-ops must be at least 2 (one conv and the classifier)")
        config = SpaceConfig(parse_shape(options["input"]), options["classes"], max_ops=options["max_ops"])
        rng = random.Random(options["seed"])
        try:
            archs = [random_architecture(rng, config).to_json() for _ in range(options["count"])]
        except RuntimeError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(archs, indent=1))
