"""Where things go when the user does not say: the one place for every default location."""

from pathlib import Path

STORAGE = "sqlite:///carbrand-search.db"  # Optuna storage URL
ARTIFACTS = "artifacts"  # artifact store: a folder, or s3://BUCKET
DATA = Path("demo-data")  # what `carbrand-search data demo demo-data` writes
HEARTBEAT_S = 15  # seconds between a running trial's heartbeats
PROXY_PORT = 13000  # Optuna's default port for its gRPC storage proxy
GRACE_FACTOR = 4  # a trial silent for this many heartbeats is failed and retried
DEVICE_NAMES = "auto, cpu, cuda or cuda:N"  # what --device accepts (training.device reads them)
