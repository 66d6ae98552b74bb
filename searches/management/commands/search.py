"""``manage.py search``: run a search in-process, store it like the dashboard's runs, print its front."""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from searches.engine.strategies.config import ERROR_OBJECTIVES, FIDELITY_SCHEDULES, STRATEGIES, SearchConfig
from searches.engine.strategies.driver import SearchEvent
from searches.engine.strategies.options import MEMORY_SCALES, RANKERS, SEED_KINDS, STALL_KINDS, MemNASConfig
from searches.engine.training.datasets import DATASETS, DatasetError
from searches.engine.training.train import Fidelity
from searches.models import Candidate, HardwareProfile, SearchRun
from searches.services import deployment, runs

# --memnas-* flag -> MemNAS option (JSON name); only a MemNAS run takes them.
MEMNAS_FLAGS = {
    "memnas_lambda": "lambda",
    "memnas_beta": "beta",
    "memnas_top_k": "top_k",
    "memnas_seed_backbone": "seed_backbone",
    "memnas_round0_size": "round0_size",
    "memnas_ranker": "ranker",
    "memnas_memory_scale": "memory_scale",
    "memnas_on_stall": "on_stall",
}


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def memnas_options(options: dict[str, Any]) -> dict[str, Any]:
    """The MemNAS options the --memnas-* flags give; CommandError naming the flag when one is wrong."""
    given = {dest: options[dest] for dest in MEMNAS_FLAGS if options.get(dest) is not None}
    if options["strategy"] != "memnas":
        if given:
            raise CommandError(f"{_flag(next(iter(given)))} applies to --strategy memnas only")
        return {}
    for dest in ("memnas_lambda", "memnas_beta"):
        if dest in given and not 0 <= given[dest] <= 1:
            raise CommandError(f"{_flag(dest)} must lie in [0, 1], got {given[dest]:g}")
    for dest in ("memnas_top_k", "memnas_round0_size"):
        if dest in given and given[dest] < 1:
            raise CommandError(f"{_flag(dest)} must be at least 1, got {given[dest]}")
    if "memnas_round0_size" in given and given.get("memnas_seed_backbone") != "single_blocks":
        raise CommandError("--memnas-round0-size needs --memnas-seed-backbone single_blocks (round 0)")
    return {MEMNAS_FLAGS[dest]: value for dest, value in given.items()}


class Command(BaseCommand):
    help = "Run a NAS search on a dataset under a board's limits, store it and print the Pareto front."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--dataset", default="digits", help=f"one of {', '.join(DATASETS)}")
        parser.add_argument("--profile", help="name of a board preset or of your own hardware profile")
        parser.add_argument("--sram-kb", type=float, help="peak SRAM limit in KB (overrides the profile)")
        parser.add_argument("--flash-kb", type=float, help="flash limit in KB (overrides the profile)")
        parser.add_argument(
            "--latency-ms", type=float, help="latency budget (needs a profile for core and clock)"
        )
        parser.add_argument("--max-macs", type=int, help="MACs limit per inference (overrides the profile's)")
        parser.add_argument("--budget", type=int, default=30, help="number of candidates to train")
        parser.add_argument("--strategy", choices=STRATEGIES, default="aging_evolution")
        parser.add_argument("--population", type=int, help="population size (default: budget/3, 4..100)")
        parser.add_argument("--sample-size", type=int, help="tournament sample size (default: population/4)")
        defaults = MemNASConfig()
        memnas = parser.add_argument_group("MemNAS (with --strategy memnas; recorded with the run)")
        memnas.add_argument(
            "--memnas-lambda",
            type=float,
            help=f"weight of accuracy against memory in [0, 1] ({defaults.lam})",
        )
        memnas.add_argument(
            "--memnas-beta", type=float, help=f"weight of peak SRAM against flash in [0, 1] ({defaults.beta})"
        )
        memnas.add_argument("--memnas-top-k", type=int, help=f"children trained per round ({defaults.top_k})")
        memnas.add_argument(
            "--memnas-seed-backbone",
            choices=SEED_KINDS,
            help="first backbone; single_blocks runs a round 0 of one-block networks "
            f"({defaults.seed_backbone})",
        )
        memnas.add_argument(
            "--memnas-round0-size",
            type=int,
            help=f"networks trained in round 0, with single_blocks ({defaults.round0_size})",
        )
        memnas.add_argument(
            "--memnas-ranker", choices=RANKERS, help=f"ranking model of the children ({defaults.ranker})"
        )
        memnas.add_argument(
            "--memnas-memory-scale",
            choices=MEMORY_SCALES,
            help="what the score divides memory changes by: the backbone's memory (the paper) or "
            f"the board's budget ({defaults.memory_scale})",
        )
        memnas.add_argument(
            "--memnas-on-stall",
            choices=STALL_KINDS,
            help="at a local optimum of the score: move to the best child, or raise λ halfway to 1 "
            f"and grow on ({defaults.on_stall})",
        )
        parser.add_argument("--epochs", type=int, help="training epochs per candidate")
        parser.add_argument("--train-subset", type=int, help="train on at most this many samples")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument(
            "--fidelity-schedule",
            choices=FIDELITY_SCHEDULES,
            default=SearchConfig.fidelity_schedule,
            help="off: one training per candidate; asha: successive-halving rungs (default off)",
        )
        parser.add_argument("--asha", action="store_true", help="same as --fidelity-schedule asha")
        parser.add_argument(
            "--eta",
            type=int,
            default=SearchConfig.asha_eta,
            help="ASHA: promote the top 1/ETA of a rung to ETA times the epochs",
        )
        parser.add_argument(
            "--max-rung",
            type=int,
            default=SearchConfig.asha_max_rung,
            help="ASHA: highest rung (rung k trains ETA**k x the epochs)",
        )
        parser.add_argument(
            "--error-objective",
            choices=ERROR_OBJECTIVES,
            default=SearchConfig.error_objective,
            help="validation error the search minimises: the float model's or the int8 model's",
        )
        parser.add_argument(
            "--deploy-top-k",
            type=int,
            default=0,
            metavar="K",
            help="when the search ends, train its top K Pareto candidates for deployment here (default 0)",
        )
        parser.add_argument("--user", default="demo", help="owner of the stored run (created if missing)")
        parser.add_argument("--resume", type=int, metavar="RUN_ID", help="continue a stopped run")

    def handle(self, *args: Any, **options: Any) -> None:
        run = self._resume(options) if options["resume"] else self._create(options)
        settings = ", ".join(
            f"{name} {value}" for name, value in runs.strategy_settings(run.strategy, run.config)
        )
        self.stdout.write(f"run #{run.pk}: {run.strategy} on {run.dataset}, budget {run.budget} ({settings})")
        with tqdm(
            total=run.budget, initial=run.evaluated, unit="cand", disable=options["verbosity"] < 1
        ) as bar:

            def progress(event: SearchEvent) -> None:
                # The bar counts candidates; ASHA's promotions train ones already counted.
                if event.kind in ("evaluated", "failed") and event.proposal.rung == 0:
                    bar.update(1)
                    acc = getattr(event.result, "val_accuracy", None)
                    if acc is not None:
                        bar.set_postfix_str(f"last val acc {acc:.3f}")

            try:
                runs.run_in_process(run, on_event=progress)
            except KeyboardInterrupt:
                self.stdout.write(f"\nstopped; resume with: manage.py search --resume {run.pk}")
                return
        run.refresh_from_db()
        self._print_summary(run)
        if options["deploy_top_k"] > 0 and run.status == SearchRun.Status.DONE:
            self._deploy(run, options["deploy_top_k"], options["verbosity"])

    def _user(self, username: str) -> Any:
        user, _ = get_user_model().objects.get_or_create(username=username)
        return user

    def _create(self, options: dict[str, Any]) -> SearchRun:
        user = self._user(options["user"])
        profile = None
        if options["profile"]:
            profile = HardwareProfile.objects.for_user(user).filter(name=options["profile"]).first()
            if profile is None:
                names = ", ".join(HardwareProfile.objects.for_user(user).values_list("name", flat=True))
                raise CommandError(
                    f"no hardware profile named {options['profile']!r}; choose one of: {names}"
                )
        if options["latency_ms"] is not None and profile is None:
            raise CommandError("--latency-ms needs --profile (the core and clock turn MACs into time)")
        if options["max_macs"] is not None and options["max_macs"] < 1:
            raise CommandError("--max-macs must be at least 1")
        if options["deploy_top_k"] < 0:
            raise CommandError("--deploy-top-k must not be negative")
        if options["budget"] < 1:
            raise CommandError("--budget must be at least 1")
        try:
            dataset = runs.get_dataset(options["dataset"])
        except DatasetError as exc:
            raise CommandError(str(exc)) from exc
        base = runs.default_fidelity(dataset.name)
        fidelity = Fidelity(
            **{
                **base.__dict__,
                **({"epochs": options["epochs"]} if options["epochs"] else {}),
                **({"train_subset": options["train_subset"]} if options["train_subset"] else {}),
            }
        )
        limits = runs.limits_for(
            profile, options["sram_kb"], options["flash_kb"], options["latency_ms"], options["max_macs"]
        )
        try:
            config = runs.make_config(
                dataset,
                limits,
                budget=options["budget"],
                seed=options["seed"],
                strategy=options["strategy"],
                population=options["population"],
                sample_size=options["sample_size"],
                fidelity=fidelity,
                fidelity_schedule="asha" if options["asha"] else options["fidelity_schedule"],
                asha_eta=options["eta"],
                asha_max_rung=options["max_rung"],
                error_objective=options["error_objective"],
                strategy_options=memnas_options(options),
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        return runs.create_run(user, dataset.name, config, profile=profile)

    def _resume(self, options: dict[str, Any]) -> SearchRun:
        run = SearchRun.objects.for_user(self._user(options["user"])).filter(pk=options["resume"]).first()
        if run is None:
            raise CommandError(f"user {options['user']!r} has no run #{options['resume']}")
        if run.status == SearchRun.Status.DONE:
            raise CommandError(f"run #{run.pk} is already done")
        return run

    def _deploy(self, run: SearchRun, k: int, verbosity: int) -> None:
        """Train the top K Pareto candidates for deployment, one after the other, in this process."""
        run.config = {**run.config, "deploy_top_k": k}
        run.save(update_fields=["config"])
        for job in deployment.deploy_top_k(run.pk, enqueue=False):
            self.stdout.write(f"\ntraining candidate #{job.source.index} for deployment (job #{job.pk})")
            with tqdm(
                total=job.config["epochs"] + job.config["qat_epochs"], unit="epoch", disable=verbosity < 1
            ) as bar:
                done = deployment.run_deployment(job.pk, on_epoch=lambda s: bar.update(s.epoch - bar.n))
            c = done.result_candidate if done is not None else None
            if c is None:
                self.stdout.write(f"job #{job.pk} did not finish: {done.error if done else 'not run'}")
                continue
            self.stdout.write(
                f"#{c.index} (from #{job.source.index}): test {c.test_accuracy:.3f}, int8 test "
                f"{c.int8_test_accuracy:.3f}, SRAM {c.peak_sram_bytes:,} B, flash {c.flash_bytes:,} B"
            )

    def _print_summary(self, run: SearchRun) -> None:
        counts = {s: run.candidates.filter(status=s).count() for s in Candidate.Status.values}
        self.stdout.write(
            f"run #{run.pk} {run.status}: {counts['done']} trained, {counts['rejected']} rejected before "
            f"training (over the limits), {counts['failed']} failed, {counts['cancelled']} cancelled"
        )
        if run.error:
            self.stdout.write(f"note: {run.error}")
        front = run.candidates.filter(on_pareto=True).order_by("-val_accuracy")
        objective = "int8 val error" if run.config.get("error_objective") == "int8" else "val error"
        self.stdout.write(f"\nPareto front ({objective}, peak SRAM, flash, MACs):")
        header = (
            f"{'#':>4}  {'rung':>4}  {'val acc':>7}  {'int8 val':>8}  {'test acc':>8}  {'int8 test':>9}  "
            f"{'SRAM B':>7}  {'flash B':>7}  {'MACs':>9}  mutation"
        )
        self.stdout.write(header)
        for c in front:
            int8 = "—" if c.int8_test_accuracy is None else f"{c.int8_test_accuracy:.3f}"
            int8_val = "—" if c.int8_val_accuracy is None else f"{c.int8_val_accuracy:.3f}"
            self.stdout.write(
                f"{c.index:>4}  {c.rung:>4}  {c.val_accuracy:>7.3f}  {int8_val:>8}  {c.test_accuracy:>8.3f}  "
                f"{int8:>9}  {c.peak_sram_bytes:>7,}  {c.flash_bytes:>7,}  {c.macs:>9,}  {c.mutation}"
            )
        if front:
            self.stdout.write(f"\nExport one: python manage.py verify_export {front[0].pk}  (or its page)")
