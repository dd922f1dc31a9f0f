import os

import pandas as pd
import pytest

from nbship.common import artifacts

pytestmark = pytest.mark.unit


def test_json_round_trip(tmp_path):
    path = tmp_path / "a" / "b.json"
    artifacts.write_json({"x": [1, 2]}, path)
    assert artifacts.read_json(path) == {"x": [1, 2]}


def test_failed_write_keeps_the_previous_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "data.parquet"
    artifacts.write_frame(pd.DataFrame({"a": [1]}), path)

    class Boom(Exception):
        pass

    with pytest.raises(Boom), artifacts.atomic_path(path) as tmp:
        tmp.write_text("half written")
        raise Boom
    assert pd.read_parquet(path)["a"].tolist() == [1]
    assert os.listdir(tmp_path) == ["data.parquet"]
