"""Study files (TOML) as frozen dataclasses; unknown keys and bad ranges are rejected by name."""

import dataclasses
import hashlib
import json
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from carbrand_search import models
from carbrand_search.core import metric
from carbrand_search.core.config import (
    DataConfig,
    DistillConfig,
    ModelConfig,
    PrunerConfig,
    RunConfig,
    SamplerConfig,
    StudyConfig,
    TrackingConfig,
    TrainConfig,
)
from carbrand_search.core.errors import UserError
from carbrand_search.core.fields import build, coerce, field_types, parse_literal, replace


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a range (Optuna's low/high/step/log) or a list of choices."""

    key: str  # dotted field name, e.g. "train.lr"; also the Optuna parameter name
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: tuple[Any, ...] = ()
    is_int: bool = False


@dataclass(frozen=True)
class StudySpec:
    """A whole study file, loaded and validated."""

    name: str
    path: Path
    text: str
    study: StudyConfig
    base: RunConfig
    space: tuple[ParamSpec, ...]
    sampler: SamplerConfig
    pruner: PrunerConfig
    tracking: TrackingConfig
    # Each model family a trial may build, at its fixed settings: [model]'s, and when
    # space.model.name searches families, each other one's [model.NAME] table (or its defaults).
    families: Mapping[str, ModelConfig]

    @property
    def text_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()

    @property
    def direction(self) -> metric.Direction:
        return metric.direction(self.base.train.monitor)

    @property
    def max_epochs(self) -> int:
        """The most epochs any trial of this study can train."""
        for param in self.space:
            if param.key == "train.epochs":
                return int(max(param.choices) if param.choices else param.high or 0)
        return self.base.train.epochs

    def applies(self, param: ParamSpec, family: str) -> bool:
        """Whether a trial that builds model `family` samples `param` (model keys: per family)."""
        return _applies(param, self.families[family])

    def defaults(self, family: str | None = None) -> dict[str, Any]:
        """Each searched parameter at its declared default: those of `family` (the file's own model
        when None), with model.name set to it when families are searched."""
        family = family or self.base.model.name
        values = {p.key: p.default for p in self.space if self.applies(p, family)}
        if "model.name" in values:
            values["model.name"] = family
        return values

    def resolve(self, params: Mapping[str, Any]) -> RunConfig:
        """The run config with `params` (dotted keys) applied to the file's fixed settings."""
        return _resolve(self.base, self.families, params)


# A study file is stored in the study and served by the dashboard on every request: bounded.
MAX_STUDY_BYTES = 1_000_000
MAX_CHOICES = 1_000  # per searched parameter
TOP_LEVEL = {
    "study", "data", "model", "train", "distill", "space", "sampler", "pruner", "tracking",
    "overrides",
}  # fmt: skip
SECTIONS = ("data", "model", "train", "distill")


# The repository's studies/ (an editable install): carbrand_search/search/spec.py → the repo root.
SHIPPED_STUDIES = Path(__file__).resolve().parents[2] / "studies"


def study_dirs() -> list[Path]:
    """Where study names are looked up, in order: $CARBRAND_STUDIES, ./studies, then the
    repository's studies/ (so a local folder adds studies without hiding the shipped ones)."""
    dirs = [Path(os.environ["CARBRAND_STUDIES"])] if "CARBRAND_STUDIES" in os.environ else []
    return [*dirs, Path("studies"), SHIPPED_STUDIES]


def available_studies() -> list[str]:
    return sorted({p.stem for folder in study_dirs() for p in folder.glob("*.toml")})


def find_study(name_or_path: str) -> Path:
    """A study name (`cnn-hpo`) or a path to a .toml file → the file's path."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise UserError(f"study file {path} does not exist")
        return path
    for folder in study_dirs():
        if (folder / f"{name_or_path}.toml").is_file():
            return folder / f"{name_or_path}.toml"
    known = ", ".join(available_studies()) or "none"
    where = ", ".join(str(d) for d in study_dirs())
    raise UserError(f"unknown study {name_or_path!r} in {where} (available: {known})")


def load_spec(name_or_path: str) -> StudySpec:
    """Load and validate a study file; every problem is a UserError naming the file and key."""
    path = find_study(name_or_path)
    size = path.stat().st_size
    if size > MAX_STUDY_BYTES:
        raise UserError(
            f"{path}: {size:,} bytes; a study file may hold at most {MAX_STUDY_BYTES:,}"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    return spec_from_text(text, path)


def spec_from_text(text: str, path: Path) -> StudySpec:
    """Validate study-file `text` (from a file, or as stored in a study); `path` names it."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_STUDY_BYTES:
        raise UserError(f"{path}: longer than the {MAX_STUDY_BYTES:,} bytes a study file may hold")
    try:
        return _parse(path, text, tomllib.loads(text))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML: {e}") from e
    except RecursionError:
        raise UserError(f"{path}: values nested too deeply") from None
    except (ValueError, UserError) as e:
        raise UserError(f"{path}: {e}") from e


def _parse(path: Path, text: str, raw: dict[str, Any]) -> StudySpec:
    unknown = sorted(set(raw) - TOP_LEVEL)
    if unknown:
        raise ValueError(f"unknown section [{unknown[0]}] (known: {', '.join(sorted(TOP_LEVEL))})")
    study = build(StudyConfig, raw.get("study", {}), "study")
    model_table = dict(raw.get("model", {}))
    if "name" not in model_table:
        raise ValueError(f"model.name is required (one of {', '.join(sorted(models.REGISTRY))})")
    model_name = coerce(model_table.pop("name"), str, "model.name")
    others = _family_tables(model_name, model_table)
    base = RunConfig(
        data=build(DataConfig, raw.get("data", {}), "data"),
        model=ModelConfig(
            model_name, build(models.entry(model_name).params, model_table, "model")
        ),
        train=build(TrainConfig, raw.get("train", {}), "train"),
        distill=build(DistillConfig, raw.get("distill", {}), "distill"),
    )
    fixed = raw.get("overrides", {})
    if not isinstance(fixed, Mapping):
        raise ValueError('[overrides] must be a table of dotted keys, e.g. "train.epochs" = 2')
    base = _resolve(base, others, fixed)
    raw_space = raw.get("space", {})
    named = _searched_families(model_name, base, others, raw_space)
    # With model.name fixed (an override), every trial builds that family: the others' settings
    # leave the space, as any overridden key does. model.name goes first: a trial samples its
    # family before the settings that belong to it.
    families = {base.model.name: base.model} if "model.name" in fixed else named
    space = tuple(
        sorted(
            (
                p
                for p in _parse_space(base, named, raw_space)
                if p.key not in fixed and any(_applies(p, m) for m in families.values())
            ),
            key=lambda p: p.key != "model.name",
        )
    )
    if base.distill.on:
        for param in space:
            if param.key in VIEW_RECIPE:
                raise ValueError(
                    f"space.{param.key}: cannot be searched with a distill.teacher (the "
                    "teacher's outputs are computed once per study for views drawn with it)"
                )
    spec = StudySpec(
        name=path.stem,
        path=path,
        text=text,
        study=study,
        base=base,
        space=space,
        sampler=build(SamplerConfig, raw.get("sampler", {}), "sampler"),
        pruner=build(PrunerConfig, raw.get("pruner", {}), "pruner"),
        tracking=build(TrackingConfig, raw.get("tracking", {}), "tracking"),
        families=families,
    )
    spec.resolve(spec.defaults())  # the defaults together must make a valid config
    for param in space:  # and so must every range end and choice, or trials would fail later
        ends = [("choices", c) for c in param.choices] or [
            ("low", param.low),
            ("high", param.high),
        ]
        for name, value in ends:
            for family in [value] if param.key == "model.name" else families:
                if not spec.applies(param, family):
                    continue
                where = f" (with model.name = {family!r})" if len(families) > 1 else ""
                try:
                    spec.resolve({**spec.defaults(family), param.key: value})
                except ValueError as e:
                    raise ValueError(f"space.{param.key}.{name} = {value!r}{where}: {e}") from None
    return spec


def _is_setting(model: ModelConfig, name: str) -> bool:
    return name in field_types(type(model.params))


def _applies(param: ParamSpec, model: ModelConfig) -> bool:
    section, _, name = param.key.partition(".")
    return section != "model" or name == "name" or _is_setting(model, name)


def _family_tables(name: str, table: dict[str, Any]) -> dict[str, ModelConfig]:
    """Pop the [model.NAME] tables out of [model]: other families' fixed settings."""
    others: dict[str, ModelConfig] = {}
    for key in [k for k in table if k in models.REGISTRY]:
        where = f"model.{key}"
        if key == name:
            raise ValueError(f"[{where}]: {name} is [model]'s own family; set its keys in [model]")
        if not isinstance(table[key], Mapping):
            raise ValueError(f"{where} must be a table of {key}'s settings")
        others[key] = ModelConfig(key, build(models.entry(key).params, table.pop(key), where))
    return others


def _searched_families(
    file_model: str,
    base: RunConfig,
    others: Mapping[str, ModelConfig],
    raw_space: Mapping[str, Any],
) -> dict[str, ModelConfig]:
    """The families of space.model.name, `base`'s first, each at its fixed settings; only
    `base`'s when the family is not searched. `file_model`: [model]'s name."""
    section = raw_space.get("model") if isinstance(raw_space, Mapping) else None
    table = section.get("name") if isinstance(section, Mapping) else None
    if table is None:
        if others:
            first = next(iter(others))
            raise ValueError(
                f"[model.{first}] is read only when space.model.name searches {first}"
            )
        return {base.model.name: base.model}
    if not isinstance(table, Mapping):
        raise ValueError("space.model.name must be a table with choices")
    param = _parse_param("model.name", str, table)
    if not param.choices:
        raise ValueError("space.model.name: search model families with choices = [...]")
    if param.default != file_model:
        raise ValueError(
            f"space.model.name.default must be [model]'s name ({file_model!r}): [model] "
            "holds the default family's settings"
        )
    for name in param.choices:
        models.entry(name)  # an unknown name: one line listing the registry
    unused = sorted(set(others) - set(param.choices))
    if unused:
        raise ValueError(
            f"[model.{unused[0]}]: {unused[0]} is not one of space.model.name's choices"
        )
    families = {base.model.name: base.model}
    for name in param.choices:
        default = others.get(name) or ModelConfig(name, build(models.entry(name).params, {}, name))
        families.setdefault(name, default)
    return families


def _resolve(
    base: RunConfig, families: Mapping[str, ModelConfig], values: Mapping[str, Any]
) -> RunConfig:
    """`values` applied to `base`; a model.name with settings of its own starts from them."""
    family = values.get("model.name")
    if isinstance(family, str) and family in families:
        base = dataclasses.replace(base, model=families[family])
        values = {k: v for k, v in values.items() if k != "model.name"}
    return with_values(base, values)


def field_type(config: RunConfig, key: str) -> Any:
    """The type of dotted field `key` ("train.lr", "model.dropout"), or ValueError if unknown."""
    section, _, name = key.partition(".")
    if section not in SECTIONS or not name:
        raise ValueError(
            f"unknown key {key} (keys look like data.X, model.X, train.X or distill.X)"
        )
    if key == "model.name":
        return str
    owner = config.model.params if section == "model" else getattr(config, section)
    types_ = field_types(type(owner))
    if name not in types_:
        raise ValueError(f"unknown key {key} (known keys: {', '.join(sorted(types_))})")
    return types_[name]


def with_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """Copy of `config` with dotted fields set, type-checked, each section validated once."""
    changes: dict[str, dict[str, Any]] = {section: {} for section in SECTIONS}
    for key in values:
        field_type(config, key)
        section, _, name = key.partition(".")
        changes[section][name] = values[key]
    model = config.model
    if "name" in changes["model"]:
        name = coerce(changes["model"].pop("name"), str, "model.name")
        model = ModelConfig(name, build(models.entry(name).params, asdict(model.params), "model"))
    return RunConfig(
        data=replace(config.data, changes["data"], "data"),
        model=ModelConfig(model.name, replace(model.params, changes["model"], "model")),
        train=replace(config.train, changes["train"], "train"),
        distill=replace(config.distill, changes["distill"], "distill"),
    )


def parse_overrides(overrides: Iterable[str]) -> dict[str, tuple[Any, str]]:
    """`--set key=value` strings → {key: (value, its TOML text)}; errors name the override."""
    parsed: dict[str, tuple[Any, str]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise UserError(f"--set {item!r}: expected key=value, e.g. train.epochs=2")
        try:
            value = parse_literal(text)
        except ValueError as e:
            raise UserError(f"--set {key}: {e}") from e
        # parse_literal gives a bare word back unchanged, as a string: written back as TOML, it
        # needs quotes; anything it parsed is TOML text already.
        parsed[key] = (value, json.dumps(text) if value == text else text)
    return parsed


def _checked(config: RunConfig, parsed: dict[str, tuple[Any, str]]) -> RunConfig:
    try:
        return with_values(config, {key: value for key, (value, _) in parsed.items()})
    except (ValueError, UserError) as e:
        raise UserError(f"--set: {e}") from e


def apply_overrides(config: RunConfig, overrides: Iterable[str]) -> RunConfig:
    """Apply `--set key=value` strings together; errors name the override."""
    return _checked(config, parse_overrides(overrides))


MAX_NAME = 200


def renamed(spec: StudySpec, name: str | None) -> StudySpec:
    """`--name`: the study stored under `name` rather than its file's name, so one file can
    run as several studies (another --set, the same space without a teacher)."""
    if name is None:
        return spec
    if not name.strip() or len(name) > MAX_NAME or not name.isprintable():
        raise UserError(f"--name must be 1 to {MAX_NAME} printable characters, got {name!r}")
    return dataclasses.replace(spec, name=name)


def with_overrides(spec: StudySpec, overrides: Iterable[str]) -> StudySpec:
    """`run --set`: the study with these settings fixed for every trial. They are written into
    the study's text as an [overrides] table, so the stored, hashed text says exactly what ran,
    and the same name with other overrides is refused like a different file."""
    parsed = parse_overrides(overrides)
    if not parsed:
        return spec
    if "overrides" in tomllib.loads(spec.text):
        raise UserError(f"--set: {spec.path} has an [overrides] table already; set them there")
    _checked(spec.base, parsed)  # errors name the override, before the text is built
    lines = [f"{json.dumps(key)} = {text}" for key, (_, text) in parsed.items()]
    text = spec.text.rstrip("\n") + "\n\n[overrides]  # run --set\n" + "\n".join(lines) + "\n"
    try:
        return spec_from_text(text, spec.path)
    except UserError as e:
        raise UserError(f"--set {' '.join(parsed)}: {e}") from e


RANGE_KEYS = {"low", "high", "step", "log", "default"}
# Settings one study cannot vary between trials, and why.
FIXED_PER_STUDY = {
    "data.cache_size": "workers decode images once per study at this setting; set it in [data]",
    "data.fit": "workers decode images once per study at this setting; set it in [data]",
    "train.monitor": (
        "it is the study's objective and direction, the same for every trial; set it in [train]"
    ),
    **{
        f"distill.{name}": "the teacher's outputs are computed once per study; set it in [distill]"
        for name in ("teacher", "trial", "views")
    },
}
CHOICE_KEYS = {"choices", "default"}
# What the cached teacher views are drawn with (search/teacher.py): one value per study.
VIEW_RECIPE = {"data.min_scale", "data.hflip", "data.color_jitter", "data.fit"}


def _parse_space(
    base: RunConfig, families: Mapping[str, ModelConfig], raw: Mapping[str, Any]
) -> Iterable[ParamSpec]:
    if not isinstance(raw, Mapping):
        raise ValueError("[space] must be a table of sections")
    for section, params in raw.items():
        if not isinstance(params, Mapping):
            raise ValueError(f"space.{section} must be a table of parameters")
        for name, table in params.items():
            key = f"{section}.{name}"
            if key in FIXED_PER_STUDY:
                raise ValueError(f"space.{key}: cannot be searched ({FIXED_PER_STUDY[key]})")
            if not isinstance(table, Mapping):
                raise ValueError(f"space.{key} must be a table with low/high or choices")
            yield _parse_param(key, _searched_type(base, families, key), table)


def _searched_type(base: RunConfig, families: Mapping[str, ModelConfig], key: str) -> Any:
    """The type of `key`; a model setting's in the first searched family that has it."""
    section, _, name = key.partition(".")
    if section != "model" or name == "name" or len(families) == 1:
        return field_type(base, key)
    for model in families.values():
        if _is_setting(model, name):
            return field_types(type(model.params))[name]
    raise ValueError(f"space.{key}: not a setting of {' or '.join(families)}")


def _parse_param(key: str, tp: Any, table: Mapping[str, Any]) -> ParamSpec:
    where = f"space.{key}"
    if "default" not in table:
        raise ValueError(f"{where}: missing 'default' (the value `train` uses)")
    if "choices" in table:
        extra = sorted(set(table) - CHOICE_KEYS)
        if extra:
            raise ValueError(f"{where}: unknown key {extra[0]!r} beside choices")
        choices = table["choices"]
        if not isinstance(choices, list) or not choices:
            raise ValueError(f"{where}.choices must be a non-empty list")
        if len(choices) > MAX_CHOICES:
            raise ValueError(f"{where}.choices has {len(choices):,}; at most {MAX_CHOICES:,}")
        typed = tuple(coerce(c, tp, f"{where}.choices") for c in choices)
        default = coerce(table["default"], tp, f"{where}.default")
        if default not in typed:
            raise ValueError(f"{where}.default {table['default']!r} is not one of the choices")
        return ParamSpec(key, default, choices=typed)
    extra = sorted(set(table) - RANGE_KEYS)
    if extra:
        raise ValueError(f"{where}: unknown key {extra[0]!r} (use low/high/step/log or choices)")
    if tp not in (int, float):
        raise ValueError(f"{where}: {key} is not numeric; search it with choices = [...]")
    if "low" not in table or "high" not in table:
        raise ValueError(f"{where}: a range needs both low and high")
    low = coerce(table["low"], tp, f"{where}.low")
    high = coerce(table["high"], tp, f"{where}.high")
    log = coerce(table.get("log", False), bool, f"{where}.log")
    step = coerce(table["step"], tp, f"{where}.step") if "step" in table else None
    default = coerce(table["default"], tp, f"{where}.default")
    if not low < high:
        raise ValueError(f"{where}: low ({low}) must be below high ({high})")
    if log and low <= 0:
        raise ValueError(f"{where}: log=true needs low > 0, got {low}")
    if log and step is not None:
        raise ValueError(f"{where}: step and log=true cannot be combined")
    if step is not None and step <= 0:
        raise ValueError(f"{where}.step must be > 0, got {step}")
    if not low <= default <= high:
        raise ValueError(f"{where}.default {default} is outside [{low}, {high}]")
    return ParamSpec(key, default, low=low, high=high, step=step, log=log, is_int=tp is int)
