# %% [markdown]
# # Validate
# Runs the Great Expectations suite on the raw table. A failed expectation fails
# this task, so nothing downstream runs and the published bento stays as it was.

# %% tags=["parameters"]
upstream = ["load"]
product = None
suite = ""

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
import pandas as pd

from nbship.common.artifacts import write_json
from nbship.pipeline.contract import validate_frame

raw = pd.read_parquet(upstream["load"]["data"])
summary = validate_frame(raw, suite)
write_json(
    {"success": summary.success, "evaluated": summary.evaluated, "statistics": summary.statistics},
    product["summary"],
)
print(f"{summary.evaluated} expectations passed")
