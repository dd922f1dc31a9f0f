# Project Jupyter settings. Start JupyterLab from the project root with
#     uv run nbship lab    (= uv run jupyter lab --config=jupyter_server_config.py)
# Plain `jupyter lab` does not read this file: jupyter_core >= 4.11.2 no longer reads
# config from the current directory (CVE-2022-39286), so it must be named with --config.
# See docs/jupyterlab.md.
from pathlib import Path

c = get_config()  # noqa: F821

# Ploomber 0.23.3's server extension (enabled in .venv/etc/jupyter) swaps in its own
# contents manager, which breaks JupyterLab 4.6 + jupytext 1.19: every /api/contents
# call answers 500 ("'coroutine' object is not subscriptable"). Without it, jupytext's
# own extension opens the notebooks/*.py tasks as notebooks and saves them back as
# percent-format .py, and no injected-parameters cell ever reaches the files.
c.ServerApp.jpserver_extensions = {"ploomber": False}

# Local use only: do not listen on other interfaces.
c.ServerApp.ip = "127.0.0.1"

# No outbound calls: JupyterLab's update check and news feed fetch from the internet.
c.LabApp.check_for_updates_class = "jupyterlab.NeverCheckForUpdate"
c.LabApp.news_url = None

# The project's JupyterLab defaults (.jupyter/lab/settings/overrides.json; a user's own
# settings still win): a double-click opens notebooks/*.py as a notebook (jupytext's
# viewer) with the Python kernel started (a task's file names no kernel), and no "get
# notified about official Jupyter news?" prompt, no news or update fetch (news_url above
# is the server side; the prompt is a frontend setting).
c.LabApp.app_settings_dir = str(Path(__file__).resolve().parent / ".jupyter/lab/settings")
