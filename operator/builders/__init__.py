"""Pure builders: a validated resource (plus resolved inputs) -> the child manifests it needs.
No API calls here; the reconcile shell applies what these return."""
