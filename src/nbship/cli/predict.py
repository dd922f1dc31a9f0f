"""`nbship predict DATA -o OUT`: batch scoring with the published bento's model, in this
process or on a Dask cluster. The work itself is in `nbship.batch`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from nbship.cli.common import PROJECT_OPTION, load_project, published_bento


def _progress(rows: int, total: int | None) -> None:
    """One status line on a terminal (rewritten in place), nothing when piped."""
    if not sys.stderr.isatty():
        return
    done = f" ({rows / total:.0%})" if total else ""
    click.echo(f"\rscored {rows:,} rows{done}", err=True, nl=False)


@click.command()
@PROJECT_OPTION
@click.argument("data")
@click.option("--output", "-o", required=True, help="The scores: a .parquet or .csv path or "
              "fsspec URL (s3://...).")  # fmt: skip
@click.option("--rejects", default=None, help="The rows that break the contract, with the "
              "field and rule (default: beside the output, <name>.rejects.<suffix>).")  # fmt: skip
@click.option("--model", "model_tag", default=None, help="A registered version (name:version) "
              "instead of the champion.")  # fmt: skip
@click.option("--bento", type=click.Path(file_okay=False, exists=True, path_type=Path),
              default=None, help="A bento folder (default: the project's published "
              "one).")  # fmt: skip
@click.option("--chunk-rows", type=click.IntRange(min=1), default=None,
              help="Rows in memory at a time (default: env.yaml batch.chunk_rows).")  # fmt: skip
@click.option("--dask", "address", default=None, help="Score on this dask.distributed "
              "scheduler (default: env.yaml batch.dask; none: this process).")  # fmt: skip
@click.option("--local", is_flag=True, help="Score in this process even when env.yaml "
              "names a Dask cluster.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the run's summary as JSON.")
def predict(
    project: Path, data: str, output: str, rejects: str | None, model_tag: str | None,
    bento: Path | None, chunk_rows: int | None, address: str | None, local: bool,
    as_json: bool,
) -> None:  # fmt: skip
    """Score DATA (a .csv or .parquet path or fsspec URL) with the champion, as POST
    /predict would: the same contract, the same answers. Rows that break the contract
    go to the rejects file, one line per field and rule; the input streams in chunks."""
    from nbship.batch.run import predict_file
    from nbship.batch.scorer import BatchError, Scorer
    from nbship.registry.model_store import MissingArtifactError, TamperedArtifactError
    from nbship.serving.following import RefusedModel

    loaded = load_project(project)
    settings = loaded.config.batch
    address = None if local else (address or settings.dask)
    rows = chunk_rows or settings.chunk_rows
    try:
        scorer = Scorer.from_bento(bento or published_bento(loaded), loaded.registry_url(),
                                   model_tag)  # fmt: skip
        if address:
            from nbship.batch.cluster import predict_on_cluster

            result = predict_on_cluster(scorer, data, output, address, rejects, rows, _progress)
        else:
            result = predict_file(scorer, data, output, rejects, rows, _progress)
    except (BatchError, RefusedModel, MissingArtifactError, TamperedArtifactError,
            FileNotFoundError, ValueError) as exc:  # fmt: skip
        raise click.ClickException(str(exc)) from None
    if sys.stderr.isatty():
        click.echo("", err=True)  # end the progress line
    if as_json:
        click.echo(json.dumps(result.to_dict(), indent=2))
        return
    where = f" on {result.workers} Dask worker(s)" if result.workers else ""
    click.echo(
        f"scored {result.scored:,} of {result.rows:,} rows with {result.model_tag}{where}"
        f" in {result.seconds:.1f} s -> {result.output}"
    )
    click.echo(
        f"rejected {result.rejected_rows:,} row(s) ({result.errors:,} broken rule(s))"
        f" -> {result.rejects}"
    )
