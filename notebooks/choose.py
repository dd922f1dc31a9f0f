# %% [markdown]
# # Choose the winner
# The candidate with the best test value of the metric named in env.yaml (`selection_metric`).

# %% tags=["parameters"]
upstream = ["evaluate"]
product = None
metric = "f1_macro"

# %%
from nbship.common.artifacts import read_json, write_json
from nbship.pipeline import training

results = read_json(upstream["evaluate"]["metrics"])
choice = training.choose_winner({name: r["test"] for name, r in results.items()}, metric)
write_json(
    {
        "winner": choice.winner,
        "metric": choice.metric,
        "value": choice.value,
        "ranking": choice.ranking,
    },
    product["winner"],
)
print(f"winner: {choice.winner} ({metric} = {choice.value:.4f})")
choice.ranking
