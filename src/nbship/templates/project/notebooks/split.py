# %% [markdown]
# # Split
# Train / test split (stratified on the classes for classification) and a small pinned
# golden set for later comparisons. Labelled feedback is split the same way and added to
# train and test; the golden set stays on the source data. The task (classification or
# regression) is decided here, from `task:` in env.yaml or from the target column.

# %% tags=["parameters"]
upstream = ["validate", "load", "feedback"]
product = None
target = ""
task = "auto"
test_size = 0.25
golden_size = 60
seed = 42

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
import pandas as pd

from nbship import tasks
from nbship.common.artifacts import read_json, write_frame, write_json
from nbship.pipeline import data

raw = pd.read_parquet(upstream["load"]["data"])
feedback = pd.read_parquet(upstream["feedback"]["data"])
kind, why = tasks.resolve(task, raw[target])
print(why)
parts, from_feedback = data.split_with_feedback(
    raw, feedback, target, test_size=test_size, golden_size=golden_size, seed=seed, task=kind
)
for name in ("train", "test", "golden"):
    write_frame(getattr(parts, name), product[name])
write_json(
    {
        "task": kind.kind,
        "rows": {"train": len(parts.train), "test": len(parts.test), "golden": len(parts.golden)},
        "feedback": {**read_json(upstream["feedback"]["summary"]), "split": from_feedback},
        "fingerprints": {
            "raw": data.fingerprint(raw),
            "feedback": data.fingerprint(feedback),
            "train": data.fingerprint(parts.train),
            "test": data.fingerprint(parts.test),
            "golden": data.fingerprint(parts.golden),
        },
    },
    product["summary"],
)

# %%
if kind.is_classification:
    parts.train[target].value_counts().plot.bar(title="training labels")
else:
    parts.train[target].plot.hist(bins=30, title="training target")
