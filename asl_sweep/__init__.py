"""asl-sweep: staged, fully recorded hyperparameter search for image classifiers.

One folder a layer; imports run only downward (tests/test_layout.py keeps it so):

    cli        parse arguments, build typed settings once, map errors to exit codes
    results    read back, status, report, export, predict
    search     Optuna storage, stages, trials, the evidence rule, the final test score
    tracking   MLflow (the only mlflow importer), the UI server, plots
    training   the plain loop, optimizer, resume points, model files (no Optuna, no MLflow)
    models     the registry, layers, pretrained backbones, frozen features
    data       images, the built-in signers, splits, augmentation, batches
    settings   what a study says (pydantic, no torch)
    runtime    errors, crash-safe files, the workspace, signals
"""

__version__ = "0.1.0"
