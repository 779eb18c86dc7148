"""Neuraxis infrastructure as code: Pulumi components (Lake, GpuNodePool, EdgeSites, Monitoring,
Platform, and the cluster each stack deploys onto), the stack builder and a CrossGuard pack.

Importing any module here creates no resources; `stacks/__main__.py` is the program entry.
"""
