"""Policy pack entry point: `pulumi preview --policy-pack policies --policy-pack-config policies/config/<stack>.json`.

Only the PolicyPack lives here because its constructor serves gRPC and never returns; the
policies are in `dynamo_policies` so tests and `python -m dynctl policy` can run them too.
"""

from pulumi_policy import PolicyPack

from dynamo_policies import PACK_ENFORCEMENT_LEVEL, PACK_NAME, POLICIES

PolicyPack(name=PACK_NAME, policies=POLICIES, enforcement_level=PACK_ENFORCEMENT_LEVEL)
