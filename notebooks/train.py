# %% [markdown]
# # Train one candidate
# This notebook is the model: its preprocessing and estimator are written here, as in
# any notebook, and handed to nbship by the last cell. Ploomber runs it once per name in
# `candidates` (env.yaml), with that name's `hyperparams`. The model is one scikit-learn
# Pipeline that starts from the raw feature columns, so serving needs no feature code.

# %% tags=["parameters"]
upstream = ["split"]
product = None
candidate = "logreg"
hyperparams = {}
features = {"numeric": [], "categorical": []}
target = "species"

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.pipeline.training import save_candidate

train = pd.read_parquet(upstream["split"]["train"])
X, y = train[features["numeric"] + features["categorical"]], train[target]

# %% [markdown]
# Measurements: the median fills a gap, then they are scaled. Island and sex: the most
# frequent value fills a gap, then one column per value (a value unseen in training
# encodes as all zeros). `baseline` predicts the class shares: the floor to beat.

# %%
preprocess = ColumnTransformer(
    [
        (
            "numeric",
            make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
            features["numeric"],
        ),
        (
            "categorical",
            make_pipeline(
                SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
            ),
            features["categorical"],
        ),
    ]
)
estimators = {
    "baseline": DummyClassifier,
    "logreg": LogisticRegression,
    "forest": RandomForestClassifier,
    "knn": KNeighborsClassifier,
    "hist_gb": HistGradientBoostingClassifier,
}
params = hyperparams.get(candidate, {})
model = Pipeline([("preprocess", preprocess), ("model", estimators[candidate](**params))])

# %% [markdown]
# The hand-off: nbship fits the model on the training split (timing the fit; a model you
# have fitted yourself is kept as it is), scores it and saves it for the evaluate task.

# %%
save_candidate(model, product, X, y, params=params, name=candidate)
model
