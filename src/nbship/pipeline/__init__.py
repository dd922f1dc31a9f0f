"""The notebook DAG: the Ploomber seam, data, the data contract (GX), training metrics."""
