# %% [markdown]
# # Choose the winner
# The candidate with the best test value of the metric named in env.yaml (`selection_metric`).

# %% tags=["parameters"]
upstream = ["evaluate", "split"]
product = None
metric = "auto"

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
from nbship import tasks
from nbship.common.artifacts import read_json, write_json
from nbship.pipeline import training

task = tasks.get(read_json(upstream["split"]["summary"])["task"])
results = read_json(upstream["evaluate"]["metrics"])
choice = training.choose_winner({name: r["test"] for name, r in results.items()}, metric, task=task)
write_json(
    {
        "winner": choice.winner,
        "metric": choice.metric,
        "value": choice.value,
        "ranking": choice.ranking,
    },
    product["winner"],
)
print(f"winner: {choice.winner} ({choice.metric} = {choice.value:.4f})")
choice.ranking
