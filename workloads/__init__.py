"""What runs in pods (and locally under `neuraxis run`): etl, train, tune, evaluate, serve, edge."""
