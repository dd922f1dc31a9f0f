# %% [markdown]
# # Predicting high income from census data
# Written like a scikit-learn tutorial: read a CSV, split it, build a ColumnTransformer
# and a gradient-boosting model, fit, score. `nbship adopt` takes it as it is.

# %%
import matplotlib.pyplot as plt
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.compose import make_column_selector as selector
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OrdinalEncoder

# %%
adult_census = pd.read_csv("census.csv")
target_name = "class"
target = adult_census[target_name]
data = adult_census.drop(columns=[target_name, "person_id"])
adult_census.head()

# %%
data_train, data_test, target_train, target_test = train_test_split(data, target, random_state=42)

# %%
categorical_preprocessor = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
preprocessor = ColumnTransformer(
    [("categorical", categorical_preprocessor, selector(dtype_exclude="number"))],
    remainder="passthrough",
)
model = make_pipeline(preprocessor, HistGradientBoostingClassifier(max_leaf_nodes=16))
model.fit(data_train, target_train)

# %%
print(f"accuracy on the test set: {model.score(data_test, target_test):.3f}")
data_train["age"].plot.hist()
plt.show()
