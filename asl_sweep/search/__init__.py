"""The staged Optuna search: Optuna storage and stage studies (`store`), the study record
(`record`), one process's view of a study (`session`), one trial and its exception policy
(`trial`), the only caller of `trial.suggest_*` (`space`), winner selection and the evidence
rule (`selection`), a stage seen whole (`stageview`), stage orchestration (`study`) and the
final score on the test split (`evaluation`, here because a study ends by scoring its final
configuration once).

May import every layer below: `tracking`, `training`, `models`, `data`, `settings`,
`runtime`."""
