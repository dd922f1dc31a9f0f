"""The penguins table with a binary Yes/No target: is the penguin an Adélie?"""

from __future__ import annotations

import pandas as pd


def load() -> pd.DataFrame:
    import palmerpenguins

    df = palmerpenguins.load_penguins()
    df.insert(0, "adelie", (df.pop("species") == "Adelie").map({True: "Yes", False: "No"}))
    return df
