"""The evaluate workload: held-out metrics, gates, model card and plots (see run.py)."""
