# %% [markdown]
# # Train one candidate
# One task per candidate (Ploomber grid over `candidates` in env.yaml). The model is a
# scikit-learn Pipeline that includes its preprocessing, so serving needs no feature code.

# %% tags=["parameters"]
upstream = ["split"]
product = None
candidate = "logreg"
hyperparams = {}
features = {"numeric": [], "categorical": []}
target = "species"

# %%
import pandas as pd

from nbship.common.artifacts import write_json, write_model
from nbship.pipeline import training

cols = training.Features.from_params(features)
train = pd.read_parquet(upstream["split"]["train"])
params = hyperparams.get(candidate, {})
model = training.build_candidate(candidate, cols, params)
seconds = training.fit(model, train, cols, target)
write_model(model, product["model"])
write_json(
    {
        "candidate": candidate,
        "params": params,
        "train_seconds": seconds,
        "train_metrics": training.score(model, train, cols, target),
    },
    product["summary"],
)
model
