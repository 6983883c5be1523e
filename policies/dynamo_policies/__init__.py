"""The dynamo-guardrails policies, importable without starting the policy pack.

`policies/__main__.py` hands `POLICIES` to `PolicyPack` (whose constructor serves gRPC
forever); `dynctl policy` and the tests run the same policy objects in-process.
"""

from pulumi_policy import EnforcementLevel

from . import coordination, gpu, operations, supply_chain

PACK_NAME = "dynamo-guardrails"
# The level of a policy that sets none (every policy here sets its own).
PACK_ENFORCEMENT_LEVEL = EnforcementLevel.ADVISORY

POLICIES = [*gpu.POLICIES, *supply_chain.POLICIES, *coordination.POLICIES, *operations.POLICIES]

__all__ = ["PACK_ENFORCEMENT_LEVEL", "PACK_NAME", "POLICIES"]
