"""Study files: shipped ones load; bad keys, types and ranges are rejected by name."""

from pathlib import Path

import optuna
import pytest
from conftest import REPO

from carbrand_search.core.errors import UserError
from carbrand_search.search.space import decode, encode, sample
from carbrand_search.search.spec import SHIPPED_STUDIES, apply_overrides, load_spec

MINIMAL = """
[model]
name = "small_cnn"

[space.train.lr]
low = 1e-4
high = 1e-2
log = true
default = 1e-3
"""


def _study(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.toml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("name", ["cnn-hpo", "cnn-bn-hpo", "cnn-demo", "effnet-b0"])
def test_shipped_studies_load(name: str) -> None:
    spec = load_spec(name)
    assert spec.name == name
    assert spec.text == (REPO / "studies" / f"{name}.toml").read_text()
    assert spec.space


@pytest.mark.parametrize("path", sorted((REPO / "bench" / "studies").glob("*.toml")), ids=str)
def test_real_data_experiment_studies_load(path: Path) -> None:
    spec = load_spec(str(path))
    config = spec.resolve(spec.defaults())
    assert spec.study.n_trials == 1 and all(len(p.choices) == 1 for p in spec.space)
    # Every make counts alike: by the loss's class weights or by balanced sampling.
    assert "balanced" in (config.train.class_weights, config.train.sampling)


def test_cnn_defaults_reproduce_the_seed_recipe() -> None:
    spec = load_spec("cnn-hpo")
    config = spec.resolve(spec.defaults())
    assert config.model.params.filters == (32, 64, 128)
    assert config.model.params.dense_units == 256
    assert (config.train.optimizer, config.train.lr, config.train.weight_decay) == (
        "adamw",
        3e-3,
        5e-5,
    )
    assert (config.train.label_smoothing, config.train.scheduler) == (0.05, "plateau")
    assert (config.data.cache_size, config.data.image_size, config.data.crop) == (
        256,
        224,
        "random",
    )
    assert load_spec("cnn-bn-hpo").resolve({}).model.params.batch_norm is True
    effnet = load_spec("effnet-b0")
    e = effnet.resolve(effnet.defaults())
    assert (e.model.name, e.train.epochs, e.train.freeze_epochs, e.train.scheduler) == (
        "efficientnet_b0",
        8,
        2,
        "cosine",
    )
    assert (e.train.lr, e.train.weight_decay) == (3e-4, 1e-4)


def test_unknown_study_lists_available() -> None:
    shipped = ", ".join(sorted(p.stem for p in SHIPPED_STUDIES.glob("*.toml")))
    assert "cnn-demo" in shipped
    with pytest.raises(UserError, match=rf"unknown study 'nope'.*available: {shipped}\)"):
        load_spec("nope")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "\n[train]\nepochz = 3\n", r"unknown key train\.epochz"),
        (MINIMAL + "\n[extra]\n", r"unknown section \[extra\]"),
        (
            MINIMAL.replace("low = 1e-4", "low = 1e-1"),
            r"space\.train\.lr: low \(0\.1\) must be below high",
        ),
        (
            MINIMAL.replace("default = 1e-3", "default = 0.5"),
            r"space\.train\.lr\.default 0\.5 is outside",
        ),
        (
            MINIMAL + '\n[train]\nepochs = "ten"\n',
            r"train\.epochs: expected an integer, got 'ten'",
        ),
        (
            MINIMAL
            + '\n[space.train.optimizer]\nchoices = ["adamw", "lion"]\ndefault = "adamw"\n',
            r"space\.train\.optimizer\.choices: expected one of",
        ),
        (
            MINIMAL + "\n[space.train.nope]\nlow = 1\nhigh = 2\ndefault = 1\n",
            r"unknown key train\.nope",
        ),
        (
            MINIMAL + "\n[space.model.batch_norm]\nlow = 0\nhigh = 1\ndefault = 0\n",
            r"model\.batch_norm is not numeric",
        ),
        (MINIMAL.replace('name = "small_cnn"', 'name = "vgg"'), r"unknown model 'vgg'"),
        (
            MINIMAL + "\n[data]\nimage_size = 300\n",
            r"data\.image_size must be in \[8, data\.cache_size=256\]",
        ),
        (
            "[model]\nname = 'small_cnn'\n[space.train.lr]\nlow = 0.0\nhigh = 1.0\nlog = true\ndefault = 0.5\n",
            r"log=true needs low > 0",
        ),
        ("[study]\nn_trials = 3\n", r"model\.name is required"),
        (
            MINIMAL + "\n[space.data.cache_size]\nchoices = [128, 256]\ndefault = 256\n",
            r"space\.data\.cache_size: cannot be searched",
        ),
        (
            MINIMAL
            + '\n[space.train.monitor]\nchoices = ["val_loss", "val_macro_f1"]\n'
            + 'default = "val_macro_f1"\n',
            r"space\.train\.monitor: cannot be searched \(it is the study's objective",
        ),
        (
            "[model]\nname = 'resnet'\nchannels = [32, 64, 128]\n",
            r"model\.channels needs one width per stage \(4\)",
        ),
        ("[model\nname=", r"not valid TOML"),
    ],
)
def test_bad_study_files_name_file_and_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_spec(_study(tmp_path, text))
    assert str(tmp_path / "s.toml") in str(info.value)
    assert "\n" not in str(info.value)


def test_overrides_are_type_checked_and_applied_together() -> None:
    spec = load_spec("cnn-hpo")
    base = spec.resolve(spec.defaults())
    config = apply_overrides(
        base,
        ["data.cache_size=64", "data.image_size=56", "model.filters=[8, 16]", "train.lr=0.01"],
    )
    assert (config.data.cache_size, config.data.image_size) == (64, 56)
    assert config.model.params.filters == (8, 16)
    assert config.train.lr == 0.01
    with pytest.raises(UserError, match=r"--set: train\.epochs: expected an integer, got 'many'"):
        apply_overrides(base, ["train.epochs=many"])
    with pytest.raises(UserError, match=r"unknown key train\.epoch \(known keys:"):
        apply_overrides(base, ["train.epoch=3"])
    with pytest.raises(UserError, match=r"expected key=value"):
        apply_overrides(base, ["train.epochs"])


def test_switching_model_keeps_shared_params(tmp_path: Path) -> None:
    spec = load_spec("effnet-b0")
    config = apply_overrides(
        spec.resolve({}), ["model.name=tf_efficientnet_lite0", "model.drop_rate=0.3"]
    )
    assert config.model.name == "tf_efficientnet_lite0"
    assert config.model.params.drop_rate == 0.3
    with pytest.raises(UserError, match=r"unknown key model\.(pretrained|weights|drop_rate)"):
        apply_overrides(spec.resolve({}), ["model.name=small_cnn"])


def test_space_samples_in_range_and_round_trips_through_storage() -> None:
    spec = load_spec("cnn-hpo")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        trial = study.ask()
        params = sample(trial, spec)
        study.tell(trial, 0.0)
        assert 1e-4 <= params["train.lr"] <= 1e-2
        assert params["model.filters"] in [
            (16, 32, 64),
            (32, 64, 128),
            (64, 128, 256),
            (32, 64, 128, 256),
        ]
        assert decode(spec, study.trials[-1].params) == params
        spec.resolve(params)  # every sampled point is a valid configuration


FAMILIES = """
[model]
name = "resnet"
channels = [16, 32, 64, 128]

[model.small_cnn]
batch_norm = true
filters = [8, 16]

[space.model.name]
choices = ["resnet", "small_cnn"]
default = "resnet"

[space.model.layers]
choices = [[1, 1, 1, 1], [2, 2, 1, 1]]
default = [1, 1, 1, 1]

[space.model.dropout]
low = 0.0
high = 0.5
default = 0.3

[space.train.lr]
low = 1e-4
high = 1e-2
log = true
default = 1e-3
"""


def test_a_searched_model_family_samples_only_its_own_settings(tmp_path: Path) -> None:
    spec = load_spec(_study(tmp_path, FAMILIES))
    assert spec.space[0].key == "model.name"  # sampled first: the rest depend on it
    assert set(spec.defaults()) == {"model.name", "model.layers", "train.lr"}
    assert spec.defaults("small_cnn") == {
        "model.name": "small_cnn", "model.dropout": 0.3, "train.lr": 1e-3,
    }  # fmt: skip
    # A FixedTrial refuses a parameter it was not given: sampling a key of the other family fails.
    cnn = sample(optuna.trial.FixedTrial(encode(spec.defaults("small_cnn"))), spec)
    config = spec.resolve(cnn)
    assert config.model.name == "small_cnn"
    assert (config.model.params.filters, config.model.params.batch_norm) == ((8, 16), True)
    resnet = spec.resolve(sample(optuna.trial.FixedTrial(encode(spec.defaults())), spec))
    assert (resnet.model.name, resnet.model.params.channels) == ("resnet", (16, 32, 64, 128))

    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    names = set()
    for _ in range(12):
        trial = study.ask()
        params = sample(trial, spec)
        study.tell(trial, 0.0)
        names.add(params["model.name"])
        own = "model.dropout" if params["model.name"] == "small_cnn" else "model.layers"
        other = {"model.dropout", "model.layers"} - {own}
        assert own in params and not other & set(params)
        assert (
            spec.resolve(decode(spec, study.trials[-1].params)).model.name == params["model.name"]
        )
    assert names == {"resnet", "small_cnn"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ("[space.model.dropout]", "[space.model.nope]"),
            r"space\.model\.nope: not a setting of resnet or small_cnn",
        ),
        (
            ('default = "resnet"', 'default = "small_cnn"'),
            r"space\.model\.name\.default must be \[model\]'s name \('resnet'\)",
        ),
        (
            ("[model.small_cnn]", "[model.resnet]"),
            r"\[model\.resnet\]: resnet is \[model\]'s own family",
        ),
        (
            ('choices = ["resnet", "small_cnn"]', 'choices = ["resnet", "small_cnn", "effnet"]'),
            r"unknown model 'effnet'",
        ),
        (
            ("high = 0.5", "high = 1.0"),
            r"space\.model\.dropout\.high = 1\.0 \(with model\.name = ",
        ),
    ],
)
def test_bad_family_searches_are_refused_by_name(
    tmp_path: Path, change: tuple[str, str], message: str
) -> None:
    with pytest.raises(UserError, match=message) as info:
        load_spec(_study(tmp_path, FAMILIES.replace(*change)))
    assert "\n" not in str(info.value)


def test_another_familys_table_needs_the_family_searched(tmp_path: Path) -> None:
    without_search = FAMILIES.replace("[space.model.name]", "[unused]")
    unsearched = without_search[: without_search.index("[unused]")]
    with pytest.raises(UserError, match=r"\[model\.small_cnn\] is read only when space\.model"):
        load_spec(_study(tmp_path, unsearched))
    # Fixing the family for every trial (what --set model.name=… writes) builds it from its table.
    fixed = load_spec(_study(tmp_path, FAMILIES + '\n[overrides]\n"model.name" = "small_cnn"\n'))
    config = fixed.resolve(fixed.defaults("small_cnn"))
    assert (config.model.name, config.model.params.filters) == ("small_cnn", (8, 16))
    assert [p.key for p in fixed.space] == ["model.dropout", "train.lr"]
