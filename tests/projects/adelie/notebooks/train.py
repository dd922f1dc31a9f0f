# %% [markdown]
# # Train: is it an Adélie?
# The data scientist's own Pipeline: a transformer from the project's package
# (`penguin_extras.features.BillShape`), then scikit-learn's own parts.

# %% tags=["parameters"]
upstream = ["split"]
product = None
candidate = "logreg"
hyperparams = {}
features = {"numeric": [], "categorical": []}
target = "adelie"

# %%
import pandas as pd
from penguin_extras.features import BillShape
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from nbship.pipeline.training import save_candidate

train = pd.read_parquet(upstream["split"]["train"])
X, y = train[features["numeric"] + features["categorical"]], train[target]

# %%
numbers = make_pipeline(BillShape(), SimpleImputer(strategy="median"), StandardScaler())
words = make_pipeline(
    SimpleImputer(strategy="most_frequent"), OneHotEncoder(handle_unknown="ignore")
)
model = make_pipeline(
    ColumnTransformer(
        [
            ("numbers", numbers, make_column_selector(dtype_include="number")),
            ("words", words, make_column_selector(dtype_include=object)),
        ]
    ),
    LogisticRegression(**hyperparams.get(candidate, {})),
)
model.fit(X, y)  # fitted here: nbship keeps this very object

# %%
save_candidate(model, product, X, y, params=hyperparams.get(candidate, {}), name=candidate)
