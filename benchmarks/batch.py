"""Batch scoring benchmark: `nbship predict` on one million rows against the model's own
in-process prediction on the same frame, and a two-worker Dask LocalCluster against one
process, all measured in the same run.

    uv run python -m benchmarks.batch [--project .] [--rows 1000000]

The project must be built (its published bento is scored; BENTOML_HOME must be the one
the build used). The rows are the project's data source drawn with replacement (seeded),
written once to parquet (and CSV). The floor is the fitted pipeline's `predict_proba` (a
classifier) or `predict` (a regressor) on the ready DataFrame of those rows: no file, no
contract check, no output. `nbship predict` is timed in-process (reading, checking,
predicting and writing; model loading excluded) and once as the command (start-up
included). Each rate is the best of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.serve import predictor, source_rows
from tests.support import PROJECT


def best_seconds(run: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def frame_of(project: Path, columns: list[str], rows: int, seed: int = 0) -> pd.DataFrame:
    source = pd.DataFrame(source_rows(project, columns))
    picks = np.random.default_rng(seed).integers(0, len(source), rows)
    return source.iloc[picks].reset_index(drop=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=PROJECT)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--no-dask", action="store_true")
    args = parser.parse_args()

    from nbship.batch.run import predict_file
    from nbship.batch.scorer import Scorer
    from nbship.project import Project

    project = Project.load(args.project)
    scorer = Scorer.from_bento(project.published_bento, project.registry_url())
    frame = frame_of(project.path, scorer.columns, args.rows)
    results: dict[str, object] = {"rows": args.rows, "model": scorer.served.tag,
                                  "inference": scorer.served.inference}  # fmt: skip
    predict = predictor(scorer.served.model, scorer.task.kind)
    floor = best_seconds(lambda: predict(frame), args.repeats)
    results["in_process_rows_per_s"] = args.rows / floor

    with tempfile.TemporaryDirectory(prefix="nbship-bench-batch-") as tmp:
        data = Path(tmp) / "rows.parquet"
        frame.to_parquet(data, index=False)
        csv = Path(tmp) / "rows.csv"
        frame.to_csv(csv, index=False)
        out = str(Path(tmp) / "scores.parquet")

        def local(source: Path = data) -> object:
            return predict_file(scorer, str(source), out, chunk_rows=args.chunk_rows)

        batch = best_seconds(local, args.repeats)
        results["nbship_predict_rows_per_s"] = args.rows / batch
        results["ratio_vs_in_process"] = floor / batch
        results["csv_rows_per_s"] = args.rows / best_seconds(lambda: local(csv), args.repeats)
        command = [str(Path(sys.executable).with_name("nbship")), "predict", str(data),
                   "-o", out, "--local", "-p", str(project.path)]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        results["command_seconds"] = time.perf_counter() - started
        results["command_ratio_vs_in_process"] = floor / results["command_seconds"]  # type: ignore[operator]
        if not args.no_dask:
            from distributed import LocalCluster

            from nbship.batch.cluster import predict_on_cluster

            with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                              dashboard_address=None) as cluster:  # fmt: skip
                address = cluster.scheduler_address

                def on_cluster() -> object:
                    return predict_on_cluster(scorer, str(data), out, address,
                                              chunk_rows=args.chunk_rows)  # fmt: skip

                on_cluster()  # the first run also ships the model to the workers
                dask = best_seconds(on_cluster, args.repeats)
            results["dask_2_workers_rows_per_s"] = args.rows / dask
            results["dask_2_workers_vs_one_process"] = batch / dask
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
