"""The embedded default: `neuraxis run` executes resources on this machine, with the same
workload commands the operator's pods run and the same gating and status rules."""
