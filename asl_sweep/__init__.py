"""asl-sweep: staged, fully recorded hyperparameter search for image classifiers."""

__version__ = "0.1.0"
