"""Prefect flows: compose the stage tasks of tasks/ into the jobs people run."""
