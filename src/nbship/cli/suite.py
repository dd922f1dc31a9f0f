"""`nbship suite`: a table profiled into a Great Expectations suite in expectations/."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("data")
@click.option("--target", required=True, help="The column the model predicts.")
@click.option("--drop", multiple=True, help="A column that is not a feature (an id, a leak "
              "of the target): left out of the suite; repeat for several.")  # fmt: skip
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where to write it (default: expectations/<data name>.json).")  # fmt: skip
@click.option("--name", default=None, help="The suite's name (default: the data's name).")
@click.option("--force", is_flag=True, help="Replace an existing suite file.")
def suite(
    data: str, target: str, drop: tuple[str, ...], output: Path | None, name: str | None,
    force: bool,
) -> None:  # fmt: skip
    """Profile DATA (a .csv/.parquet file, or `module:function`) into a GX suite: types,
    nulls, allowed categories, ranges with a margin. Review it: it is plain JSON."""
    from nbship.pipeline.data import load_source
    from nbship.pipeline.profile import profile_table, write_suite

    stem = Path(data).stem if ":" not in data else data.rpartition(":")[2]
    name = name or stem
    try:
        table = load_source(data)
        profile = profile_table(table, target, drop, name=name, source=data)
        path = write_suite(profile.suite, output or Path("expectations") / f"{name}.json",
                           force=force)  # fmt: skip
    except (OSError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"Wrote {path}: {len(profile.suite['expectations'])} expectations on "
               f"{len(profile.rules)} columns of {len(table)} rows")  # fmt: skip
    width = max(map(len, profile.rules))
    for column, rule in profile.rules.items():
        click.echo(f"  {column:<{width}}  {rule}{'  (target)' if column == target else ''}")
    for note in profile.notes:
        click.echo(f"  note: {note}")
    click.echo(f"  features: numeric {profile.features.numeric}, "
               f"categorical {profile.features.categorical}")  # fmt: skip
