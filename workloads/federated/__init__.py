"""Federated training with Flower: each site trains the platform's built-in models on its own
Dataset version; only (clipped, optionally noised, securely aggregated) updates travel."""
