"""`python -m nbship.batch BENTO DATA -o OUT`: batch scoring where there is a bento but no
project (the bento's image, run by the CronJob `nbship k8s` writes). The registry is
`NBSHIP_REGISTRY_URL` (else the one the bento was built with), as for its server.
`nbship predict` is the same run inside a project."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nbship.batch.run import DEFAULT_CHUNK_ROWS, predict_file
from nbship.batch.scorer import BatchError, Scorer
from nbship.registry.model_store import MissingArtifactError, TamperedArtifactError
from nbship.serving.following import RefusedModel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nbship.batch", description=__doc__)
    parser.add_argument("bento", type=Path, help="the bento folder")
    parser.add_argument("data", help="a .csv or .parquet path or fsspec URL")
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--rejects", default=None)
    parser.add_argument("--model", default=None, help="a registered version (name:version)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--dask", default=None, help="a dask.distributed scheduler address")
    args = parser.parse_args(argv)
    try:
        scorer = Scorer.from_bento(args.bento, model_tag=args.model)
        if args.dask:
            from nbship.batch.cluster import predict_on_cluster

            result = predict_on_cluster(scorer, args.data, args.output, args.dask,
                                        args.rejects, args.chunk_rows)  # fmt: skip
        else:
            result = predict_file(scorer, args.data, args.output, args.rejects, args.chunk_rows)
    # a job's log gets one line, and the exit status says it failed
    except (BatchError, RefusedModel, MissingArtifactError, TamperedArtifactError,
            FileNotFoundError, ValueError) as exc:  # fmt: skip
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
