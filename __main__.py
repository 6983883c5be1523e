"""dynamo-distributed: NVIDIA Dynamo distributed LLM serving on Kubernetes.

Reads the stack's config once into typed objects, deploys the stack's topology
(stacks/dev.py or stacks/multinode.py) and exports what a user needs next.
"""

import pulumi

import stacks
from stacks.config import ConfigError, load

try:
    config = load()
except ConfigError as error:
    # One clear line instead of a traceback; nothing is deployed.
    raise pulumi.RunError(f"invalid stack config: {error}") from None

for name, value in stacks.build(config).items():
    pulumi.export(name, value)
