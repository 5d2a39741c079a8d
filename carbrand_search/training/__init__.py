"""Plain PyTorch training, no Optuna: the fit loop and one training run from a resolved
config. Imports data/, models/ and core/."""
