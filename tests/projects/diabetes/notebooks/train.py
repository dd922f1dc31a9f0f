# %% [markdown]
# # Train: disease progression a year on (regression)
# Two candidates of the data scientist's own: a ridge on a log-transformed target, and
# gradient-boosted trees.

# %% tags=["parameters"]
upstream = ["split"]
product = None
candidate = "ridge"
hyperparams = {}
features = {"numeric": [], "categorical": []}
target = "target"

# %%
import numpy as np
import pandas as pd
from sklearn.compose import TransformedTargetRegressor
from sklearn.ensemble import HistGradientBoostingRegressor
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nbship.pipeline.training import save_candidate

train = pd.read_parquet(upstream["split"]["train"])
X, y = train[features["numeric"]], train[target]
params = hyperparams.get(candidate, {})

# %%
if candidate == "ridge":
    model = TransformedTargetRegressor(
        make_pipeline(StandardScaler(), Ridge(**params)), func=np.log, inverse_func=np.exp
    )
else:
    model = HistGradientBoostingRegressor(**params)

# %%
save_candidate(model, product, X, y, params=params, name=candidate)
