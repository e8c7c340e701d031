"""Orchestration shared by the flows and the CLI: the runner factory, the local Prefect server,
deployments, run locks, DVC recording and the flow scaffold. It may know the list of flows;
nothing under ``tasks/`` or ``workers/`` imports it (compute-shared code lives in ``tasks/common``).
"""
