"""What a command asks of a search: where it runs (`RunOptions`, shared by `run`, `worker` and
each worker's plan) and how `run` launches it (`LaunchOptions`)."""

from dataclasses import dataclass
from pathlib import Path

from carbrand_search.core import defaults
from carbrand_search.core.errors import UserError
from carbrand_search.data.cache import default_cache_root
from carbrand_search.search.budget import check_budget


@dataclass(frozen=True)
class RunOptions:
    """Where a study runs and with what: the options `run` and `worker` share."""

    storage: str = defaults.STORAGE
    artifacts: str = defaults.ARTIFACTS
    data: Path = defaults.DATA
    cache: Path | None = None  # None: the default cache root
    device: str = "auto"
    heartbeat_s: int = defaults.HEARTBEAT_S
    skip_bad: bool = False

    @property
    def cache_root(self) -> Path:
        return self.cache or default_cache_root()


@dataclass(frozen=True)
class LaunchOptions:
    """What only `run` decides: how many workers, the budget, a warm start."""

    workers: int = 1
    workers_per_gpu: int | None = None  # an upper bound; None: spread over the GPUs, no bound
    threads: int | None = None  # torch threads per worker; None: the cores split evenly
    n_trials: int | None = None  # None: the stored budget, or the study file's
    warm_from: str | None = None  # another study in the same storage
    warm_top: int = 3

    def __post_init__(self) -> None:
        counts = {
            "--workers": self.workers, "--workers-per-gpu": self.workers_per_gpu,
            "--threads": self.threads, "--top": self.warm_top,
        }  # fmt: skip
        for option, value in counts.items():
            if value is not None and value < 1:
                raise UserError(f"{option} must be >= 1, got {value}")
        check_budget(self.n_trials)
