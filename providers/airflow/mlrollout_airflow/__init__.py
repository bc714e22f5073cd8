"""mlrollout for Apache Airflow: run a rollout (or a fleet) as a task.

Importing this package does not import Airflow: :func:`get_provider_info` is read by Airflow's
``ProvidersManager`` through the ``apache_airflow_provider`` entry point; the operators live in
:mod:`mlrollout_airflow.operators` and the triggers in :mod:`mlrollout_airflow.triggers`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0.dev0"


def get_provider_info() -> dict[str, Any]:
    """The provider's description for Airflow (``airflow providers list``, the UI's page)."""
    return {
        "package-name": "mlrollout-airflow",
        "name": "mlrollout",
        "description": "Staged, statistically-gated rollouts of ML model endpoints "
        "(mlrollout) as Airflow tasks.",
        "versions": [__version__],
        "operators": [
            {
                "integration-name": "mlrollout",
                "python-modules": ["mlrollout_airflow.operators"],
            }
        ],
        "triggers": [
            {
                "integration-name": "mlrollout",
                "python-modules": ["mlrollout_airflow.triggers"],
            }
        ],
        "integrations": [
            {
                "integration-name": "mlrollout",
                "external-doc-url": "https://pypi.org/project/mlrollout/",
                "tags": ["software"],
            }
        ],
    }
