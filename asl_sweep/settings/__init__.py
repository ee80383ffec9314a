"""What a study says, typed: data and trainer settings (`config`), the study's stages and
search spaces (`spec`), the YAML file with `--set` and `--epochs` applied (`studyfile`).

Pydantic only, no torch: a config error is reported before anything heavy loads. May import
`runtime`."""
