"""The Pulumi program: reads the stack's `neuraxis:*` config and builds that stack.

This is the program entry and the only module that creates resources when it runs; everything it
calls lives in neuraxis.infra, where importing creates nothing.
"""

from neuraxis.infra.config import load_stack_config
from neuraxis.infra.stack import build_stack, lake_secret_key

config = load_stack_config()
build_stack(config, lake_secret_key(config)).export()
