"""Infra tests: Pulumi components and stacks under mocks (unit), the policy validators as plain
functions, and the real engine against a bare local control plane (`cluster`-marked)."""
