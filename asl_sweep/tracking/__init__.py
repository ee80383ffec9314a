"""What is recorded and shown: the MLflow client (`tracker`, the only module that imports
mlflow), the UI server (`ui`), a model's scoring server (`serving`) and the plots drawn into records and reports (`plots`, here
because the search draws learning curves onto its stage runs).

May import `training`, `models`, `data`, `settings` and `runtime` (today it needs only
`runtime`)."""
