# %% [markdown]
# # Feedback
# Labelled feedback from the prediction log (`POST /feedback`): true labels of logged
# predictions and new labelled records, checked with the expectations suite on the
# columns they carry. `nbship retrain` re-runs this task to take in new feedback; with
# no log yet, the table is empty and the pipeline trains on the source data alone.

# %% tags=["parameters"]
upstream = None
product = None
log_url = "sqlite:///prediction_log.db"
suite = "expectations/penguins.json"
features = {"numeric": [], "categorical": []}
target = "species"

# %%
from nbship import feedback, training
from nbship.artifacts import write_frame, write_json
from nbship.contract import validate_frame

cols = training.Features.from_params(features)
labelled, summary = feedback.labelled_feedback(feedback.log_url(log_url), cols, target)
if len(labelled):
    validate_frame(labelled, suite, columns=[*cols.columns, target])
write_frame(labelled, product["data"])
write_json(summary.as_dict(), product["summary"])
summary.as_dict()
