"""mlrollout's Azure provider: Azure ML managed online endpoints, Azure Monitor metrics.

Importing this package imports no azure library (see :mod:`mlrollout_azure.spec`).
"""
