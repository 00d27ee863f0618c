"""Corral: a Kubernetes operator that hosts Claude Agent SDK sessions."""

__version__ = "0.1.0"
