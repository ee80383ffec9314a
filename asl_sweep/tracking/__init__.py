"""What is recorded and shown: the MLflow client (`tracker`, the only client of mlflow), the
UI server (`ui`) and the web app it serves (`uiapp`, MLflow's own, run inside MLflow's server
process), a model's scoring server (`serving`) and the plots drawn into records and reports
(`plots`, here because the search draws learning curves onto its stage runs), and a new
home's MLflow store copied from a blank one (`blank`).

May import `training`, `models`, `data`, `settings` and `runtime` (today it needs only
`runtime`)."""
