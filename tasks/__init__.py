"""Everything around the learning core, in three rooms whose imports point one way.

- `tasks.adapters`: the outside world and the project folder (params.yaml, the file layout,
  MLflow tracking and registry, the request inbox, the ledger, Great Expectations, locks).
  Adapters import nothing else of `tasks`.
- `tasks.stages`: the study's DVC stage entry points (`python -m tasks.stages.<stage>`), and
  the libraries they share (the model steps, the findings). Stages import adapters.
- `tasks.production`: the services (the deletion batch, tuning, review and promotion, the
  gates). They import adapters and the stages' shared steps.

`flows/` (Prefect) and `cli.py` sit on top of all three.
"""
