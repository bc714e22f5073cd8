"""Credentials: ``DefaultAzureCredential`` (environment, workload identity, managed identity, Azure
CLI, ...). Tests replace :func:`default_credential` with a fake token credential; nothing else in
the provider knows where the token comes from."""

from __future__ import annotations

from typing import Any


def default_credential() -> Any:
    """The credential chain every Azure client of a rollout uses (never interactive)."""
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(exclude_interactive_browser_credential=True)
