# %% [markdown]
# # Package
# Saves the winner to the BentoML model store with its metadata and publishes a bento
# (exact pins, explicit model tag, the expectations suite) that `bentoml serve` runs.

# %% tags=["parameters"]
upstream = ["choose", "evaluate", "split", "train-*"]
product = None
project_dir = "."
suite = ""
features = {"numeric": [], "categorical": []}
target = ""
bento_name = ""
bentos_dir = "bentos"
max_batch = 1000
reports_dir = "build/reports"
registry_url = "sqlite:///registry.db"
model_store = "model-store"
cards_dir = "build/cards"
prediction_log = {}
gates = {}
batch = {}

# %%
# Run by hand (JupyterLab's Run All): the values `nbship build` passes; in a build, nothing.
from nbship.pipeline.hand_run import as_in_build

as_in_build(globals())

# %%
from nbship.common.artifacts import read_json, write_json
from nbship.packaging import bento as package

choice = read_json(upstream["choose"]["winner"])
winner = choice["winner"]
# the train task whose candidate won (a grid's task, or a train notebook of its own)
(trained,) = [
    p for p in upstream["train-*"].values() if read_json(p["summary"])["candidate"] == winner
]
result = package.package_winner(
    model_path=trained["model"],
    candidate=read_json(trained["summary"]),
    evaluation=read_json(upstream["evaluate"]["metrics"])[winner],
    choice=choice,
    split_summary=read_json(upstream["split"]["summary"]),
    suite_path=suite,
    features=features,
    target=target,
    bento_name=bento_name,
    max_batch=max_batch,
    project_dir=project_dir,
    reports_dir=reports_dir,
    publish_to=f"{bentos_dir}/{bento_name}",
    registry_url=registry_url,
    model_store=model_store,
    train_path=upstream["split"]["train"],
    test_path=upstream["split"]["test"],
    cards_dir=cards_dir,
    prediction_log=prediction_log,
    golden_path=upstream["split"]["golden"],
    task=read_json(upstream["split"]["summary"])["task"],
    gates=gates,
    batch=batch,
)
write_json(result, product["summary"])
write_json(result, product["manifest"])
result
