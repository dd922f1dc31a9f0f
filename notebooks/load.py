# %% [markdown]
# # Load
# Reads the raw table from a packaged source (nothing is downloaded) and keeps it as parquet.

# %% tags=["parameters"]
upstream = None
product = None
source = "palmerpenguins:load_penguins"
sample_rows = None
seed = 42

# %%
from nbship.common.artifacts import write_frame
from nbship.pipeline import data

raw = data.load_source(source, sample_rows=sample_rows, seed=seed)
write_frame(raw, product["data"])
print(f"{len(raw)} rows, fingerprint {data.fingerprint(raw)}")
raw.describe(include="all").T
