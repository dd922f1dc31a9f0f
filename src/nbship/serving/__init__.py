"""The BentoML service: contract-checked requests, batching, compiled inference, the
request log and live metrics."""
