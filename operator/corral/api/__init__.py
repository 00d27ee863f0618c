"""The AgentSession API: pydantic models that are the single source of truth.

The models live in `corral.api.v1alpha1`; this package imports nothing itself, so that
`corral.api.runtime` (the pod contract) loads without pydantic: the runner reads it
before it listens on its port, in its first milliseconds.
"""
