"""The inference server: loads a verified model artifact and serves it over HTTP (KServe v1 and
Open Inference Protocol v2 routes) with input validation, dynamic batching and Prometheus metrics.
The edge agent reuses it unchanged (`neuraxis.workloads.edge`)."""
