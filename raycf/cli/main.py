"""The `raycf` command line: a thin Click layer over plain functions."""

from __future__ import annotations

import dataclasses
import functools
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from raycf.cluster.connection import DASHBOARD_HOST
from raycf.cluster.submit import require_cluster_path, submit
from raycf.data.datasets import DATASETS
from raycf.data.loaders import FORMATS
from raycf.data.schemes import SCHEMES, scheme_names
from raycf.data.spec import SYNTHETIC, DataSpec
from raycf.data.split import MASK_PROTOCOLS
from raycf.errors import RaycfError
from raycf.eval.metrics import (
    METRICS,
    MetricAt,
    Selection,
    parse_metric_list,
)
from raycf.models import MODELS
from raycf.models.registry import hyperparameter_names, model_names
from raycf.storage.location import Location

EXIT_BAD_INPUT = 2


def parse_fractions(_ctx: click.Context, _param: click.Parameter, text: str) -> tuple[float, float, float]:
    """`0.6,0.2,0.2` -> (0.6, 0.2, 0.2)."""
    try:
        parts = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"expected three numbers like 0.6,0.2,0.2, got {text!r}") from None
    if len(parts) != 3:
        raise click.BadParameter(f"expected three numbers like 0.6,0.2,0.2, got {text!r}")
    return parts  # type: ignore[return-value]


def parse_seeds(_ctx: click.Context, _param: click.Parameter, text: str | None) -> list[int] | None:
    """`0,1,2` -> [0, 1, 2]."""
    if text is None:
        return None
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isdigit() for part in parts):
        raise click.BadParameter(f"expected seeds like 0,1,2, got {text!r}")
    return [int(part) for part in parts]


def parse_selection(_ctx: click.Context, _param: click.Parameter, text: str) -> Selection:
    """`recall@20` -> Selection."""
    try:
        return Selection.parse(text)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def parse_metrics(_ctx: click.Context, _param: click.Parameter, text: str) -> tuple[MetricAt, ...]:
    """`recall@20,ndcg@100` -> MetricAt each."""
    try:
        return parse_metric_list(text)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None


def data_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The options that choose and read a run's data, turned into one `data: DataSpec` argument."""
    options = [
        click.option("--dataset", type=click.Choice([*DATASETS, SYNTHETIC]), default=None,
                     help="Named dataset (downloaded once into $RAYCF_DATA_HOME). Default: synthetic."),
        click.option("--ratings", type=click.Path(), default=None,
                     help="Ratings: MovieLens ratings.dat[.gz|.zip], u.data, ratings.csv (ML-20M), CSV, TSV, Parquet, "
                          "or a Netflix Prize directory of mv_*.txt files."),
        click.option("--format", "fmt", default="auto", show_default=True,
                     help="Ratings file format: auto, " + ", ".join(FORMATS) + "."),
        click.option("--user-col", default="user_id", show_default=True, help="User id column (CSV/TSV/Parquet)."),
        click.option("--item-col", default="item_id", show_default=True, help="Item id column (CSV/TSV/Parquet)."),
        click.option("--rating-col", default=None, help="Rating column (CSV/TSV/Parquet), for --min-rating."),
        click.option("--min-rating", type=float, default=None,
                     help="Keep ratings >= this as positives. Default: every rating is positive."),
        click.option("--time-col", default=None, help="Time column (CSV/TSV/Parquet): epoch seconds or ISO dates."),
        click.option("--min-user-items", type=int, default=None, help="Keep users with at least this many records."),
        click.option("--min-item-users", type=int, default=None, help="Keep items with at least this many users."),
        click.option("--k-core", type=int, default=None,
                     help="Keep the k-core: users and items with at least k records, iterated to a fixpoint."),
        click.option("--scheme", type=click.Choice(scheme_names()), default="records", show_default=True,
                     help="; ".join(f"{name}: {scheme.help}" for name, scheme in SCHEMES.items()) + "."),
        click.option("--heldout-users", type=float, default=None,
                     help="--scheme users: validation users and as many test users (a count, or a fraction)."),
        click.option("--fold-in", type=float, default=0.8, show_default=True,
                     help="--scheme users: share of each held-out user's items given as input (the rest predicted)."),
        click.option("--time-cuts", default=None, metavar="DATE,DATE",
                     help="--scheme time: validation and test start at these dates (or epoch seconds). Default: at "
                          "the --split fractions of the records in time order."),
        click.option("--split", "fractions", default="0.6,0.2,0.2", show_default=True, callback=parse_fractions,
                     help="Train, validation and test fractions of the records (--scheme records or time)."),
    ]

    @functools.wraps(command)
    def wrapper(fmt: str, time_cuts: str | None, **kwargs: Any) -> Any:
        spec = {field.name: kwargs.pop(field.name) for field in dataclasses.fields(DataSpec) if field.name in kwargs}
        if spec["dataset"] is not None and spec["ratings"] is not None:
            raise click.UsageError("--dataset and --ratings exclude each other: give one")
        if (spec["scheme"] == "users") != (spec["heldout_users"] is not None):
            raise click.UsageError("--heldout-users goes with --scheme users, which needs it")
        cuts = None if time_cuts is None else tuple(part.strip() for part in time_cuts.split(","))
        if cuts is not None and (spec["scheme"] != "time" or len(cuts) != 2):
            raise click.UsageError("--time-cuts takes two dates, DATE,DATE, with --scheme time")
        dataset = None if spec["ratings"] is not None else (spec["dataset"] or "synthetic")
        return command(data=DataSpec(**{**spec, "dataset": dataset, "format": fmt, "time_cuts": cuts}), **kwargs)

    for option in reversed(options):
        wrapper = option(wrapper)
    return wrapper


def shown(default: Any) -> str:
    """A default as help text shows it: 0.001, 600,200 (none for no layers), sigmoid."""
    if isinstance(default, tuple):
        return ",".join(map(str, default)) or "none"
    return f"{default:g}" if isinstance(default, float) else str(default)


def hyperparameter_help(declared: list[tuple[str, Any]]) -> str:
    """An option's help from each model's (label, field) declaring it: one sentence per distinct help text, with
    the defaults of the models that share it ("Dropout on the input (Mult-VAE 0.5, AutoRec 0)."), the model
    named first where the models' texts differ."""
    by_help: dict[str, list[tuple[str, str]]] = {}
    for label, field in declared:
        by_help.setdefault(field.metadata["help"].rstrip("."), []).append((label, shown(field.default)))
    return " ".join(f"{defaults[0][0]}: {help} ({defaults[0][1]})." if len(defaults) == 1 and len(by_help) > 1
                    else f"{help} ({', '.join(f'{label} {value}' for label, value in defaults)})."
                    for help, defaults in by_help.items())


def hyperparameter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """One option per hyperparameter of the registered models (--hidden, --l2, ...): its type, allowed values,
    help and each model's default as the models declare them. Unset options are None (the model's default)."""
    for name in reversed(hyperparameter_names()):
        declared = [(model.label, model.Params.field(name)) for model in MODELS.values()
                    if name in model.Params.names()]
        rule, default = declared[0][1].metadata["rule"], declared[0][1].default
        kind: Any = click.Choice(rule.options) if rule.options else str if isinstance(default, tuple) else type(default)
        command = click.option(f"--{name.replace('_', '-')}", name, type=kind, default=None,
                               help=hyperparameter_help(declared),
                               metavar="600[,N...]" if isinstance(default, tuple) else None)(command)
    return command


def cluster_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--address / --dashboard-host for running here, --submit / --runtime-env / --no-wait for a Ray Job."""
    options = [
        click.option("--address", default=None, help="Ray cluster to join (else $RAY_ADDRESS, else a local Ray)."),
        click.option("--dashboard-host", default=DASHBOARD_HOST, show_default=True,
                     help="Interface the dashboard of a local Ray listens on (0.0.0.0: every interface)."),
        click.option("--submit", "submit_to", default=None, metavar="http://HEAD:8265",
                     help="Run this command as a Ray Job on that cluster (current directory as working_dir)."),
        click.option("--runtime-env", type=click.Path(dir_okay=False), default=None,
                     help="With --submit: a runtime environment YAML to add (pip, env_vars...; jobs/*.yaml work)."),
        click.option("--no-wait", is_flag=True, help="With --submit: print the job id and return at once."),
        click.option("--verbose", is_flag=True,
                     help="Also show Ray's own log lines and Tune's per-trial tables (hidden by default)."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def progress_line(scored: int, total: int) -> None:
    """The one line a quiet `raycf score` shows while it runs: rewritten in place on a terminal, else printed
    once, at the end."""
    if sys.stdout.isatty():
        click.echo(f"\rscored {scored:,} of {total:,} users", nl=scored >= total)
    elif scored >= total:
        click.echo(f"scored {scored:,} of {total:,} users")


def send_job(ctx: click.Context, submit_to: str, runtime_env: str | None, no_wait: bool) -> None:
    """Run the invoking command line as a Ray Job and exit with its status."""
    sys.exit(submit(submit_to, ctx.obj["argv"], runtime_env, wait=not no_wait, echo=click.echo))


def refuse_job_options(submit_to: str | None, runtime_env: str | None, no_wait: bool) -> None:
    if submit_to is None and (runtime_env is not None or no_wait):
        raise click.UsageError("--runtime-env and --no-wait go with --submit")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="raycf")
def cli() -> None:
    """raycf: studies of Mult-VAE, RecVAE, AutoRec and Mult-DAE beside popularity, EASE, ItemKNN and iALS
    baselines, batch scoring and serving, on Ray."""


@cli.command("train")
@click.option("--model", type=click.Choice(model_names()), required=True, help="Model to train.")
@data_options
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split and the training.")
@hyperparameter_options
@click.option("--max-epochs", type=int, default=None, help="Epoch limit (1000).")
@click.option("--patience", type=int, default=None, help="Early stopping patience in epochs (50).")
@click.option("--eval-every", type=int, default=None, help="Validate every N epochs (1).")
@click.option("--mask", type=click.Choice(MASK_PROTOCOLS), default="train", show_default=True,
              help="Items masked when ranking for the test metrics.")
@click.option("--metric", "selection", default="ndcg@5", show_default=True, callback=parse_selection,
              help="Validation metric that picks the best epoch and counts patience: name@k (precision, recall, "
                   "ndcg, mrr, hit_rate, map, recall_capped).")
@click.option("--report-metrics", "report", default="", callback=parse_metrics, metavar="recall@20,ndcg@100",
              help="More metrics to report on validation and test (they decide nothing).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="Where to train: cuda needs a visible GPU.")
@click.option("--out", required=True, help="New directory for the run's outputs: a path or a URI (s3://...).")
@click.option("--quiet", is_flag=True, help="No progress line per epoch.")
def train_command(model: str, data: DataSpec, fractions: tuple[float, float, float], seed: int, mask: str,
                  selection: Selection, report: tuple[MetricAt, ...], device: str, out: str, quiet: bool,
                  **hyperparameters: Any) -> None:
    """Train one model on one split and write the split, the best checkpoint and metrics.json."""
    from raycf.models.config import TrainConfig
    from raycf.train.trainer import run_training

    selection = dataclasses.replace(selection, report=report)
    config = TrainConfig.for_model(model, seed=seed, **hyperparameters)
    run = run_training(data, config, fractions=fractions, mask=mask, out=out, device=device, selection=selection,
                       progress=None if quiet else click.echo)
    click.echo(run.summary)


@cli.command("tune")
@click.argument("study_file", required=False, type=click.Path(dir_okay=False))
@click.option("--resume", "resume_dir", default=None,
              help="Continue the interrupted study in this run directory.")
@click.option("--storage", default="runs", show_default=True, envvar="RAYCF_STORAGE",
              help="Where run directories live: a local path, or a URI pyarrow understands (s3://...); "
                   "on a cluster, a place every node can reach. Default: $RAYCF_STORAGE, else runs.")
@click.option("--name", default=None, help="Run directory name. Default: the study's name and a timestamp.")
@cluster_options
@click.option("--num-samples", type=click.IntRange(min=1), default=None, help="Samples per search-space point.")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None, help="Trials running at once.")
@click.option("--max-failures", type=click.IntRange(min=0), default=None, help="Retries of an errored trial.")
@click.option("--cpus-per-trial", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--gpus-per-trial", type=click.FloatRange(min=0), default=None)
@click.option("--dataset", type=click.Choice([*DATASETS, SYNTHETIC]), default=None,
              help="Override the study's data with a named dataset.")
@click.option("--ratings", type=click.Path(), default=None,
              help="Override the study's data with a ratings file.")
@click.option("--seed", type=int, default=None, help="Override the study's seed (split and search).")
@click.option("--repeat-seeds", default=None, callback=parse_seeds,
              help="After the study, train each model's best configuration on these split seeds (0,1,2).")
@click.option("--mlflow", default=None, metavar="URI",
              help="Track the trials and the study in this MLflow tracking server (http://HOST:5000) or database "
                   "(sqlite:///PATH.db); overrides the study's tracking.mlflow. Needs pip install 'raycf[mlflow]'.")
@click.pass_context
def tune_command(ctx: click.Context, study_file: str | None, resume_dir: str | None, storage: str, name: str | None,
                 address: str | None, dashboard_host: str, submit_to: str | None, runtime_env: str | None,
                 no_wait: bool, verbose: bool, **overrides: Any) -> None:
    """Run a study (STUDY_FILE, YAML) of Mult-VAE, AutoRec and baseline trials on Ray Tune with ASHA."""
    from raycf.cluster.connection import check_local_gpus, connect, joining, joins_a_cluster
    from raycf.data.source import prepare_split
    from raycf.integrations.mlflow_runs import check_tracking
    from raycf.study.memory import check_study_memory
    from raycf.study.schema import apply_overrides, load_study
    from raycf.tune import driver as tuning
    from raycf.tune.closing import closing_lines
    from raycf.tune.console import quiet, tune_verbosity
    from raycf.tune.repeats import format_repeats

    if (study_file is None) == (resume_dir is None):
        raise click.UsageError("give a STUDY_FILE to run, or --resume RUN_DIR to continue one (not both)")
    if resume_dir is not None and any(value is not None for value in overrides.values()):
        raise click.UsageError("--resume continues a study as it was; it takes no study overrides")
    study = None
    if study_file is not None:
        own_data = overrides["ratings"] is None and overrides["dataset"] is None
        study = apply_overrides(load_study(study_file, check_ratings=own_data and submit_to is None), **overrides)
    refuse_job_options(submit_to, runtime_env, no_wait)
    if submit_to is not None:
        if resume_dir is None:
            require_cluster_path("--storage", storage)
        send_job(ctx, submit_to, runtime_env, no_wait)
    if study is not None:  # tracking's packages and server: before Ray starts
        check_tracking(study.tracking)
    if study is not None:  # a bad bucket or credentials, or a run of that name: before Ray starts
        Location.of(storage, "").check_access("--storage")
        run_name = name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tuning.new_run_location(storage, run_name)
    elif resume_dir is not None:
        Location.of(resume_dir, "").check_access("--resume")
    if study is not None:
        from_option = overrides["gpus_per_trial"] is not None
        check_local_gpus(study.gpus_per_trial, address, what="trial", way_out="--gpus-per-trial 0",
                         asked=f"--gpus-per-trial {study.gpus_per_trial:g}" if from_option
                         else f"{study_file}: resources.gpus_per_trial: {study.gpus_per_trial:g}")
    split = None
    if study is not None:  # the data's errors, and a model too big for this machine, before Ray starts
        click.echo(f"reading {study.data.describe()} and making the split")
        split = prepare_split(study.data, study.fractions, study.seed)
        check_study_memory(study, split.n_users, split.n_items)
    run_name = str(resume_dir).rstrip("/").rsplit("/", 1)[-1] if study is None else \
        name or f"{study.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    click.echo(joining(address))
    for line in connect(address, dashboard_host, quiet(verbose), job_name=f"raycf tune {run_name}").describe():
        click.echo(line)
    if study is None:
        result = tuning.resume_study(str(resume_dir))
    else:
        click.echo(f"run directory: {Location.of(storage, run_name).uri}")
        result = tuning.run_study(study, tuning.TuneOptions(storage=storage, name=run_name,
                                                            verbose=tune_verbosity(verbose)), split)
    click.echo(tuning.format_leaderboard(result.leaderboard))
    if result.repeats is not None:
        click.echo(format_repeats(result.repeats, result.metric))
    click.echo(f"run directory: {result.run_dir} (best.json, leaderboard.parquet, trials.parquet)")
    for line in closing_lines(local_ray=not joins_a_cluster(address)):
        click.echo(line)


@cli.command("score")
@click.argument("run_dir")
@click.option("--model", "model_name", default=None, help="Score the best trial of this model (a tune run).")
@click.option("--trial", default=None, help="Score this trial id (a tune run).")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="List length.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1024, show_default=True, help="Users per batch.")
@click.option("--actors", type=click.IntRange(min=1), default=2, show_default=True, help="Scorer actors.")
@click.option("--cpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True)
@click.option("--gpus-per-actor", type=click.FloatRange(min=0), default=0.0, show_default=True)
@cluster_options
@click.option("--out", default=None, help="Output directory, path or URI. Default: RUN_DIR/scores.")
@click.option("--mask", type=click.Choice(MASK_PROTOCOLS), default="train", show_default=True,
              help="Items never recommended: the user's train items, or train and validation items.")
@click.option("--report-metrics", "report", default=None, callback=lambda ctx, param, text: None if text is None
              else parse_metrics(ctx, param, text), metavar="recall@20,ndcg@100",
              help="Metrics beside P/R/NDCG/MRR@k in user_metrics/ and the summary. Default: the run's own.")
@click.option("--users", type=click.Path(dir_okay=False), default=None,
              help="Score only these users: a file of raw user ids, one per line.")
@click.option("--stall-timeout", "stall_timeout_s", type=click.FloatRange(min=1), default=600, show_default=True,
              help="Fail (cleanly) when no batch finishes for this many seconds, e.g. no node can host a scorer.")
@click.pass_context
def score_command(ctx: click.Context, run_dir: str, model_name: str | None, trial: str | None, address: str | None,
                  dashboard_host: str, submit_to: str | None, runtime_env: str | None, no_wait: bool,
                  verbose: bool, **options: Any) -> None:
    """Score every user of RUN_DIR's split with its best checkpoint (Ray Data) and write Parquet."""
    from raycf.cluster.connection import check_local_gpus, connect, joining
    from raycf.score.job import ScoreOptions, prepare_scoring
    from raycf.tune.console import quiet

    if model_name is not None and trial is not None:
        raise click.UsageError("--model and --trial exclude each other: give one")
    score_options = ScoreOptions(**options)
    refuse_job_options(submit_to, runtime_env, no_wait)
    if submit_to is not None:
        require_cluster_path("RUN_DIR", run_dir)
        if score_options.out is not None:
            require_cluster_path("--out", score_options.out)
        send_job(ctx, submit_to, runtime_env, no_wait)
    check_local_gpus(score_options.gpus_per_actor, address, what="scorer actor", way_out="--gpus-per-actor 0",
                     asked=f"--gpus-per-actor {score_options.gpus_per_actor:g}")
    job = prepare_scoring(run_dir, score_options, model=model_name, trial=trial)  # every check, before Ray
    click.echo(joining(address))
    try:
        connection = connect(address, dashboard_host, quiet(verbose), job_name=f"raycf score {run_dir}")
    except BaseException:
        job.release()
        raise
    for line in connection.describe():
        click.echo(line)
    out, summary = job.run(progress=None if verbose else progress_line)
    click.echo(" ".join(f"{name}@{summary['k']} {summary[name]:.4f}" for name in METRICS)
               + f"  ({summary['users_evaluated']} users, {summary['mask']} masked, "
               f"{summary['users_per_second']:.0f} users/s)")
    click.echo(f"scores: {out} (topk/, user_metrics/, summary.parquet, summary.json)")


@cli.command("serve")
@click.argument("run_dir")
@click.option("--model", "model_name", default=None, help="Serve the best trial of this model (a tune run).")
@click.option("--trial", default=None, help="Serve this trial id (a tune run).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface the HTTP proxy listens on.")
@click.option("--port", type=int, default=8000, show_default=True, help="HTTP port.")
@click.option("--replicas", type=int, default=1, show_default=True, help="Replicas, each holding the model.")
@click.option("--max-batch-size", type=int, default=32, show_default=True,
              help="Requests a replica ranks together at most (1: no batching).")
@click.option("--cpus-per-replica", type=float, default=1.0, show_default=True)
@click.option("--address", default=None, help="Ray cluster to deploy on (else $RAY_ADDRESS, else a local Ray).")
@click.option("--config", "config_file", default=None, type=click.Path(dir_okay=False),
              help="Write a Serve config file for `serve deploy` instead of deploying.")
def serve_command(run_dir: str, model_name: str | None, trial: str | None, host: str, port: int, replicas: int,
                  max_batch_size: int, cpus_per_replica: float, address: str | None, config_file: str | None) -> None:
    """Serve RUN_DIR's best checkpoint over HTTP (Ray Serve) until Ctrl-C."""
    from raycf.serving.deploy import AppArgs, ServeOptions, deploy, shutdown, write_config

    if model_name is not None and trial is not None:
        raise click.UsageError("--model and --trial exclude each other: give one")
    args = AppArgs(run_dir, model_name, trial, replicas, max_batch_size, cpus_per_replica)
    options = ServeOptions(host, port, address)
    if config_file is not None:
        click.echo(f"Serve config: {write_config(config_file, args, options)} (deploy it with: serve deploy "
                   f"{config_file})")
        return
    serving = deploy(args, options)
    for line in serving.watch:
        click.echo(line)
    click.echo(f"serving {run_dir} at {serving.url} (POST /recommend, POST /recommend/batch, GET /model, "
               "GET /healthz); Ctrl-C stops it")
    click.echo(serving.curl_example())
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        shutdown()
        click.echo("raycf serve: stopped")


@cli.command("report")
@click.argument("run_dir")
@click.option("--scores", default=None,
              help="The `raycf score` output to report (path or URI). Default: RUN_DIR/scores.")
def report_command(run_dir: str, scores: str | None) -> None:
    """Write RUN_DIR/report.md and report.html: run facts, leaderboard, figures and test metrics."""
    from raycf.report.run_report import REPORT_HTML, write_report

    markdown = write_report(run_dir, scores)
    click.echo(f"report: {markdown} and {markdown.rsplit('/', 1)[0]}/{REPORT_HTML}")


@cli.command("compare")
@click.argument("scores", nargs=-1, required=True)
@click.option("--out", required=True, help="New directory for compare.json and compare.md: a path or a URI.")
def compare_command(scores: tuple[str, ...], out: str) -> None:
    """Paired per-user comparison of two or more `raycf score` outputs (SCORES) of the same split."""
    from raycf.report.compare import run_compare, summary_lines

    location, result = run_compare(scores, out)
    for line in summary_lines(result, location):
        click.echo(line)


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input becomes one line on stderr and exit status 2, never a traceback."""
    try:
        args = sys.argv[1:] if argv is None else argv
        cli.main(args=args, prog_name="raycf", standalone_mode=False, obj={"argv": args})
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except click.UsageError as error:
        hint = f" (see '{error.ctx.command_path} --help')" if error.ctx is not None else ""
        click.echo(f"raycf: error: {error.format_message()}{hint}", err=True)
        sys.exit(EXIT_BAD_INPUT)
    except click.Abort:
        click.echo("raycf: interrupted", err=True)
        sys.exit(130)
    except RaycfError as error:
        click.echo(f"raycf: error: {error}", err=True)
        sys.exit(EXIT_BAD_INPUT)
