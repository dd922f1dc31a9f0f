"""Reading labels and rejected fields out of logged requests for /metrics."""

from __future__ import annotations

import json

import pytest

from nbship.serving.live_metrics import _labels, failed_fields

pytestmark = pytest.mark.unit


def test_labels_from_raw_answers_equal_the_decoded_ones():
    outputs = [
        {"label": "Adelie", "probabilities": {"Adelie": 0.9}},
        {"label": 'Gen"too\\', "probabilities": {}},
        {"label": "Chinstrap", "probabilities": {}},
    ]
    raw = json.dumps(outputs, separators=(",", ":")).encode()
    assert _labels(raw) == _labels(outputs) == ["Adelie", 'Gen"too\\', "Chinstrap"]


def test_failed_fields_name_the_last_part_of_each_location():
    detail = {"detail": [{"loc": [0, "island"]}, {"loc": ["sex"]}, {"loc": []}]}
    assert failed_fields(json.dumps(detail)) == ["island", "sex", "body"]
    assert failed_fields("not json") == [] and failed_fields(None) == []
