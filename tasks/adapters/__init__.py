"""Adapters: params.yaml, the project folder's layout and files, MLflow, the inbox, the ledger, GX, locks."""
