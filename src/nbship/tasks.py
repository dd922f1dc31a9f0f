"""What differs between kinds of learning task: the metrics a model is scored, chosen and
gated on, and their direction."""

from __future__ import annotations

# classification: name -> True when a larger value is better
METRICS: dict[str, bool] = {
    "accuracy": True,
    "balanced_accuracy": True,
    "f1_macro": True,
    "log_loss": False,
}
