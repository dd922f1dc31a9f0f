# %% [markdown]
# # Evaluate
# Scores every candidate on the held-out test split (the task's metrics) and times
# one-row predictions.

# %% tags=["parameters"]
upstream = ["train-*", "split"]
product = None
features = {"numeric": [], "categorical": []}
target = ""

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
import matplotlib.pyplot as plt
import pandas as pd
from sklearn.metrics import ConfusionMatrixDisplay, PredictionErrorDisplay

from nbship import tasks
from nbship.common.artifacts import read_json, read_model, write_json
from nbship.pipeline import training

cols = training.Features.from_params(features)
task = tasks.get(read_json(upstream["split"]["summary"])["task"])
test = pd.read_parquet(upstream["split"]["test"])
models, results = {}, {}
for products in upstream["train-*"].values():
    fitted = read_json(products["summary"])
    name = fitted["candidate"]
    models[name] = read_model(products["model"])
    results[name] = {
        "test": training.score(models[name], test, cols, target, task),
        "train_seconds": fitted["train_seconds"],
        "predict_ms": training.predict_latency_ms(models[name], test[cols.columns].head(20), 3),
    }
write_json(results, product["metrics"])
pd.DataFrame({name: r["test"] for name, r in results.items()}).T

# %%
fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), squeeze=False)
for ax, (name, model) in zip(axes[0], sorted(models.items()), strict=True):
    if task.is_classification:
        ConfusionMatrixDisplay.from_estimator(
            model, test[cols.columns], test[target], ax=ax, colorbar=False
        )
    else:
        PredictionErrorDisplay.from_estimator(
            model, test[cols.columns], test[target], kind="actual_vs_predicted", ax=ax
        )
    ax.set_title(name)
fig.tight_layout()
