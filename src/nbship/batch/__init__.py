"""Batch scoring: a file (or an object-store URL) through the served model, chunk by chunk,
locally or on a Dask cluster, with the contract and the answers of `POST /predict`.
"""
