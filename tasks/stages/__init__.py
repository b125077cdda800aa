"""The study's DVC stages, one entry point each (`python -m tasks.stages.<stage>`), and their shared libraries."""
