# %% [markdown]
# # Load
# Reads the raw table (a file, or a function of a package), leaves out the columns
# `data.drop` names, and keeps it as parquet.

# %% tags=["parameters"]
upstream = None
product = None
source = ""
drop = []
sample_rows = None
seed = 42

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
from nbship.common.artifacts import write_frame
from nbship.pipeline import data

raw = data.load_source(source, sample_rows=sample_rows, seed=seed, drop=drop)
write_frame(raw, product["data"])
print(f"{len(raw)} rows, fingerprint {data.fingerprint(raw)}")
raw.describe(include="all").T
