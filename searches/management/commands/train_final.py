"""``manage.py train_final``: train one candidate for deployment in the foreground."""

from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from searches.engine.training.deployment import DeployEpoch, Recipe
from searches.models import Candidate, DeploymentJob
from searches.services import deployment


class Command(BaseCommand):
    help = (
        "Train a candidate for deployment (whole training split, augmentation, quantisation-aware "
        "fine-tuning) and store the result as a new candidate of its run."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("candidate_id", type=int, help="the trained candidate's id (its page's URL)")
        parser.add_argument("--epochs", type=int, help="float epochs (default: the data set's recipe)")
        parser.add_argument("--no-augment", action="store_true", help="train without augmentation")
        parser.add_argument("--no-qat", action="store_true", help="skip quantisation-aware fine-tuning")
        parser.add_argument(
            "--average-last",
            type=int,
            metavar="N",
            help="average the weights of the last N float epochs before QAT (0: off; default: the recipe's)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object with the result")

    def handle(self, *args: Any, **options: Any) -> None:
        candidate = Candidate.objects.select_related("run").filter(pk=options["candidate_id"]).first()
        if candidate is None:
            raise CommandError(f"no candidate with id {options['candidate_id']}")
        try:
            recipe = deployment.recipe_for(
                candidate,
                epochs=options["epochs"],
                augment=False if options["no_augment"] else None,
                qat=not options["no_qat"],
                average_last=options["average_last"],
            )
            job = deployment.start_deployment(candidate, recipe, enqueue=False)
        except deployment.DeploymentUnavailable as exc:
            raise CommandError(f"candidate {candidate.pk}: {exc}") from exc
        quiet = options["json"] or options["verbosity"] < 1
        if not quiet:
            what = f"candidate {candidate.pk} (#{candidate.index}), {_describe(recipe)}"
            self.stdout.write(f"deployment job #{job.pk}: {what}")
        finished = self._run(job, recipe, quiet)
        if (
            finished is None
            or finished.status != DeploymentJob.Status.DONE
            or finished.result_candidate is None
        ):
            reason = finished.error if finished is not None else "not run"
            raise CommandError(f"deployment job #{job.pk} did not finish: {reason}")
        self._report(finished, as_json=options["json"])

    def _run(self, job: DeploymentJob, recipe: Recipe, quiet: bool) -> DeploymentJob | None:
        with tqdm(total=recipe.total_epochs, unit="epoch", disable=quiet) as bar:

            def progress(stats: DeployEpoch) -> None:
                bar.update(stats.epoch - bar.n)
                bar.set_postfix_str(
                    f"{stats.phase} val {stats.val_accuracy:.3f} int8 {stats.int8_val_accuracy:.3f}"
                )

            try:
                return deployment.run_deployment(job.pk, on_epoch=progress)
            except KeyboardInterrupt:
                deployment.cancel_deployment(job)
                raise CommandError(f"stopped; deployment job #{job.pk} cancelled") from None

    def _report(self, job: DeploymentJob, *, as_json: bool) -> None:
        c = job.result_candidate
        assert c is not None and job.result is not None
        data = {
            "candidate_id": c.pk,
            "source_id": job.source_id,
            "job_id": job.pk,
            "peak_sram_bytes": c.peak_sram_bytes,
            "flash_bytes": c.flash_bytes,
            "macs": c.macs,
            "val_accuracy": c.val_accuracy,
            "test_accuracy": c.test_accuracy,
            "int8_val_accuracy": c.int8_val_accuracy,
            "int8_test_accuracy": c.int8_test_accuracy,
            "source_int8_test_accuracy": job.source.int8_test_accuracy,
            "epochs": job.result["epochs"],
            "best_epoch": job.result["best_epoch"],
            "seconds": job.result["seconds"],
            "recipe": job.config,
        }
        if as_json:
            self.stdout.write(json.dumps(data))
            return
        source_int8 = job.source.int8_test_accuracy
        before = "—" if source_int8 is None else f"{source_int8:.4f}"
        self.stdout.write(
            f"candidate {c.pk} (#{c.index}): test {c.test_accuracy:.4f}, "
            f"int8 test {c.int8_test_accuracy:.4f} "
            f"(search fidelity #{job.source.index}: int8 test {before}); "
            f"{data['epochs']} epochs in {data['seconds']:.0f} s, best epoch {data['best_epoch']}"
        )
        self.stdout.write(f"Verify its export: python manage.py verify_export {c.pk}")


def _describe(recipe: Recipe) -> str:
    aug = "no augmentation" if recipe.augment is None else recipe.augment.describe()
    averaged = (
        f", weights of the last {recipe.average_last} float epochs averaged" if recipe.average_last else ""
    )
    return (
        f"{recipe.epochs} float + {recipe.qat_epochs} QAT epochs, batch {recipe.batch_size}, {aug}{averaged}"
    )
