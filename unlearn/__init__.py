"""unlearn: the learning core (torch and torchvision only).

Data with stable sample ids, retain/forget/test splits, models, the one trainer,
checkpoints and presets. Nothing here imports Prefect, MLflow, DVC, Great Expectations
or boto3, so the core runs on a bare GPU machine and in any notebook.
"""

__version__ = "0.1.0"
