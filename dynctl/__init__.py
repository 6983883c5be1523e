"""dynctl: operations for dynamo-distributed (render, policy, twin, preflight, smoke, traffic, health)."""
