"""carbrand-search: Optuna hyperparameter search for car-brand image classifiers."""

__version__ = "0.1.0"
