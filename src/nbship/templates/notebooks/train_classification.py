# %% [markdown]
# # Train one candidate
# This notebook is your model: write its preprocessing and estimator here, as in any
# notebook, and hand the model to nbship in the last cell. Ploomber runs it once per name
# in `candidates` (env.yaml), with that name's `hyperparams`. The model is one
# scikit-learn Pipeline that starts from the raw feature columns, so serving needs no
# feature code. Code you reuse elsewhere belongs in a module of your own (`src/`), not
# here: a class defined in the notebook cannot be loaded by the server.

# %% tags=["parameters"]
upstream = ["split"]
product = None
candidate = "linear"
hyperparams = {}
features = {"numeric": [], "categorical": []}
target = ""

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
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.pipeline.training import save_candidate

train = pd.read_parquet(upstream["split"]["train"])
X, y = train[features["numeric"] + features["categorical"]], train[target]

# %% [markdown]
# Numbers: the median fills a gap, then they are scaled. Categories: the most frequent
# value fills a gap, then one column per value (a value unseen in training encodes as all
# zeros). `baseline` predicts the class shares: the floor to beat.

# %%
columns = []
if features["numeric"]:
    numeric = make_pipeline(SimpleImputer(strategy="median"), StandardScaler())
    columns.append(("numeric", numeric, features["numeric"]))
if features["categorical"]:
    categorical = make_pipeline(
        SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
    )
    columns.append(("categorical", categorical, features["categorical"]))
estimators = {
    "baseline": DummyClassifier,
    "linear": LogisticRegression,
    "forest": RandomForestClassifier,
    "hist_gb": HistGradientBoostingClassifier,
}
params = hyperparams.get(candidate, {})
model = Pipeline(
    [("preprocess", ColumnTransformer(columns)), ("model", estimators[candidate](**params))]
)

# %% [markdown]
# The hand-off: nbship fits the model on the training split (timing the fit; a model you
# have fitted yourself is kept as it is), scores it and saves it for the evaluate task.

# %%
save_candidate(model, product, X, y, params=params, name=candidate)
model
