"""The train workload: built-in PyTorch models on a Dataset's Delta table, DDP, checkpoints,
Ray Tune search, and the model artifact (see run.py for the flow)."""
