"""Running a served model: monitor, alerts, dashboard, feedback and retraining."""
