"""The search: study files, the space, pruners, storage, the trial record, the objective,
workers and the runner that starts them. Imports training/, data/, models/ and core/."""
