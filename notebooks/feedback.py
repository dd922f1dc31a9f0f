# %% [markdown]
# # Feedback
# Labelled feedback from the prediction log (`POST /feedback`): true labels of logged
# predictions and new labelled records, checked with the expectations suite on the
# columns they carry. `nbship retrain` re-runs this task to take in new feedback; with
# no log yet, the table is empty and the pipeline trains on the source data alone.

# %% tags=["parameters"]
upstream = ["load"]
product = None
log_url = "sqlite:///prediction_log.db"
suite = ""
features = {"numeric": [], "categorical": []}
target = ""
task = "auto"

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
from pathlib import Path

import pandas as pd

from nbship import tasks
from nbship.common.artifacts import write_frame, write_json
from nbship.operate import feedback
from nbship.pipeline import training
from nbship.pipeline.contract import validate_frame
from nbship.project import log_url as project_log_url

cols = training.Features.from_params(features)
url = project_log_url(Path.cwd(), log_url)  # the task runs in the project folder
# the task as the split decides it (labels are numbers only for regression)
kind, _ = tasks.resolve(task, pd.read_parquet(upstream["load"]["data"], columns=[target])[target])
labelled, summary = feedback.labelled_feedback(url, cols, target, task=kind.kind)
if len(labelled):
    validate_frame(labelled, suite, columns=[*cols.columns, target])
write_frame(labelled, product["data"])
write_json(summary.as_dict(), product["summary"])
summary.as_dict()
