"""The Optuna study as carbrand-search keeps it: created once from a study file, which it stores
with its hash, its trial budget and where its images were read; the rules that count trials
against that budget."""

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from carbrand_search.core import defaults, metric
from carbrand_search.core.errors import UserError
from carbrand_search.data.cache import default_cache_root
from carbrand_search.search import record
from carbrand_search.search.budget import check_budget
from carbrand_search.search.pruners import make_pruner
from carbrand_search.search.samplers import make_sampler
from carbrand_search.search.storage import mask, open_existing

if TYPE_CHECKING:
    from carbrand_search.search.spec import StudySpec

TEXT_ATTR = "study_text"  # the study file's text, as it was when the study was created
HASH_ATTR = "study_hash"  # its SHA-256
BUDGET_ATTR = "n_trials"  # finished trials the study runs to, across workers and re-runs
TEACHER_ATTR = "teacher"  # the TeacherRef every trial of a distilled study learns from
DATA_ATTR = "data"  # where the last `run` read its images: {given, resolved, cache, skip_bad}


def stored_spec(study: optuna.Study) -> "StudySpec":
    """The study file as stored in the study when it was created, checked against its stored
    hash: whoever can write to the database must not change what workers train unnoticed."""
    # Imported here: study files reach the model registry (timm, torch), which `status` and
    # the other read-only commands should not wait for.
    from carbrand_search.search.spec import spec_from_text

    text, stored_hash = study.user_attrs.get(TEXT_ATTR), study.user_attrs.get(HASH_ATTR)
    if not isinstance(text, str) or not isinstance(stored_hash, str):
        raise UserError(f"study '{study.study_name}' has no stored study file; create it with run")
    spec = spec_from_text(text, Path(f"{study.study_name}.toml"))
    if spec.text_hash != stored_hash:
        raise UserError(
            f"study '{study.study_name}': its stored study file does not match its stored hash "
            f"({spec.text_hash[:12]} vs {stored_hash[:12]}); refusing to run a changed study"
        )
    return spec


def ensure_study(
    spec: "StudySpec", storage: optuna.storages.BaseStorage, n_trials: int | None
) -> optuna.Study:
    """Create the study once or load it; a different study file under the same name is refused.
    `n_trials` (None: keep the stored budget, or the file's for a new study) sets the budget."""
    from carbrand_search.search import space

    check_budget(n_trials)

    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        direction=spec.direction,
        sampler=make_sampler(spec.sampler),
        pruner=make_pruner(spec.pruner, spec.max_epochs),
        load_if_exists=True,
    )
    stored_hash = study.user_attrs.get(HASH_ATTR)
    if stored_hash is None:
        study.set_user_attr(TEXT_ATTR, spec.text)
        study.set_user_attr(HASH_ATTR, spec.text_hash)
        # The study file's defaults (the seed's recipe) are its first trial.
        study.enqueue_trial(
            space.encode(spec.defaults()), user_attrs=record.warm_start("defaults"),
            skip_if_exists=True,
        )  # fmt: skip
    elif stored_hash != spec.text_hash:
        raise UserError(
            f"study '{spec.name}' in this storage was created from a different study file "
            f"or other --set overrides (hash {stored_hash[:12]} vs {spec.text_hash[:12]} of "
            f"{spec.path}); restore them or store it under a new name (--name)"
        )
    else:
        stored_spec(study)  # the text workers will read must still match that hash
    if n_trials is not None or BUDGET_ATTR not in study.user_attrs:
        study.set_user_attr(BUDGET_ATTR, spec.study.n_trials if n_trials is None else n_trials)
    if study.metric_names is None:  # the dashboard and Optuna's plots then name the metric
        study.set_metric_names([spec.base.train.monitor])
    return study


def metric_name(study: optuna.Study) -> str:
    """The name of what the study's trial values measure (val_macro_f1 …); "value" for a study
    that does not say."""
    return study.metric_names[0] if study.metric_names else "value"


def budget(study: optuna.Study, default: int | None = None) -> int:
    """The study's trial budget; `default` for a study not created by carbrand-search."""
    stored = study.user_attrs.get(BUDGET_ATTR, default)
    if stored is None:
        raise UserError(f"study '{study.study_name}' has no trial budget; create it with run")
    return int(stored)


def trials(study: optuna.Study, *states: TrialState) -> list[FrozenTrial]:
    """The study's trials (in `states`, when given), without copying them."""
    return study.get_trials(deepcopy=False, states=states or None)


def best_trials(found: Sequence[FrozenTrial], direction: metric.Direction) -> list[FrozenTrial]:
    """Complete trials with a value, best first."""
    done = [t for t in found if t.state == TrialState.COMPLETE and t.value is not None]
    return metric.best_first(done, direction, lambda t: t.value or 0.0)


def direction(study: optuna.Study) -> metric.Direction:
    """The study's direction as a study file names it."""
    return "maximize" if study.direction == optuna.study.StudyDirection.MAXIMIZE else "minimize"


@dataclass(frozen=True)
class ImageSource:
    """Where a study's images are read from: the data folder, the cache root, bad files."""

    root: Path
    cache: Path
    skip_bad: bool = False


@dataclass(frozen=True)
class DataLocation:
    """Where a study's last `run` read its images: the folder as given and resolved, the image
    cache (None: the default), and whether unreadable images were skipped."""

    given: str
    resolved: str
    cache: str | None = None
    skip_bad: bool = False


def remember_data(study: optuna.Study, data: Path, cache: Path | None, skip_bad: bool) -> None:
    """Store where `run` read the images (as given and resolved), so reports need no --data."""
    where = DataLocation(str(data), str(data.resolve()), str(cache) if cache else None, skip_bad)
    study.set_user_attr(DATA_ATTR, asdict(where))


def stored_data(study: optuna.Study) -> DataLocation | None:
    """Where the study's last `run` read its images; None for a study that never stored it."""
    stored = study.user_attrs.get(DATA_ATTR)
    if not stored:
        return None
    try:
        return DataLocation(**stored)
    except TypeError:
        raise UserError(
            f"study '{study.study_name}': its stored {DATA_ATTR!r} is {stored!r}, expected "
            "{given, resolved, cache, skip_bad}; it was changed outside carbrand-search"
        ) from None


def image_source(study: optuna.Study, data: Path | None, cache: Path | None) -> ImageSource:
    """Where to read `study`'s images again: --data and --cache-dir when given; otherwise where
    its last run read them (the resolved path, else the path as given, for another working
    folder or machine); for a study that never stored it, the defaults."""
    stored = stored_data(study)
    if data is None and stored is not None:
        candidates = [Path(stored.resolved), Path(stored.given)]
        found = next((p for p in candidates if p.is_dir()), None)
        if found is None:
            raise UserError(
                f"study '{study.study_name}' was run on data folder {stored.given} "
                f"({stored.resolved}), which is not here; pass --data"
            )
        data = found
    stored_cache = stored.cache if stored is not None and cache is None else None
    return ImageSource(
        root=data or defaults.DATA,
        cache=cache or (Path(stored_cache) if stored_cache else default_cache_root()),
        skip_bad=stored.skip_bad if stored is not None else False,
    )


def open_study(name: str, storage: str) -> optuna.Study:
    """A study that must exist in `storage`; a clear error naming the studies there otherwise."""
    store = open_existing(storage)
    try:
        return optuna.load_study(study_name=name, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store)]
        raise UserError(
            f"no study '{name}' in {mask(storage)} (studies: {', '.join(names) or 'none'})"
        ) from None


def pinned_teacher(storage: optuna.storages.BaseStorage, name: str) -> record.TeacherRef | None:
    """The teacher study `name` was pinned to by its first run, if it exists and has one."""
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        return None
    stored = study.user_attrs.get(TEACHER_ATTR)
    return record.TeacherRef(**stored) if stored else None


def pin_teacher(study: optuna.Study, ref: record.TeacherRef) -> None:
    """Fix the teacher's trial for the rest of the study: "its best trial" is resolved once,
    so a teacher study that goes on improving does not change a running student study's
    teacher."""
    if TEACHER_ATTR not in study.user_attrs:
        study.set_user_attr(TEACHER_ATTR, asdict(ref))
