"""Space files -> Ray Tune spaces (tune_ct/train/space.py). `ray.tune` here only builds domain objects: no cluster."""

from __future__ import annotations

import numpy as np
import pytest
from ray import tune
from ray.tune.search.sample import Categorical, Float, Integer

from tune_ct.train.hyperparameters import DEFAULTS
from tune_ct.train.space import SearchSettings, SpaceError, load_space


def space_file(tmp_path, text: str):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


SPACE = """
search: {metric: val_loss, num_samples: 4, gpus_per_worker: 0.5}
params:
  backbone: {choice: [baseline_cnn, resnet18]}
  lr: {loguniform: [1.0e-4, 1.0e-2]}
  weight_decay: {uniform: [0.0, 0.1]}
  epochs: {randint: [2, 4]}
  batch_size: 16
  aug_hflip: true
"""


def test_each_distribution_becomes_its_tune_domain(tmp_path):
    space = load_space(space_file(tmp_path, SPACE)).tune_space()
    assert isinstance(space["backbone"], Categorical) and space["backbone"].categories == ["baseline_cnn", "resnet18"]
    lr, wd = space["lr"], space["weight_decay"]
    assert isinstance(lr, Float) and (lr.lower, lr.upper) == (1e-4, 1e-2)
    assert isinstance(lr.get_sampler(), Float._LogUniform)
    assert isinstance(wd, Float) and (wd.lower, wd.upper) == (0.0, 0.1)
    assert isinstance(wd.get_sampler(), Float._Uniform)


def test_randint_upper_end_is_inclusive_in_the_file(tmp_path):
    epochs = load_space(space_file(tmp_path, SPACE)).tune_space()["epochs"]
    assert isinstance(epochs, Integer) and (epochs.lower, epochs.upper) == (2, 5)  # Tune's upper end is exclusive
    drawn = {int(v) for v in epochs.sample(size=300, random_state=np.random.default_rng(0))}
    assert drawn == {2, 3, 4}


def test_fixed_values_pass_through_and_defaults_are_filled(tmp_path):
    space = load_space(space_file(tmp_path, SPACE))
    tuned = space.tune_space()
    assert tuned["batch_size"] == 16 and tuned["aug_hflip"] is True
    assert set(tuned) == set(DEFAULTS)  # every parameter, given or not
    for name in ("image_size", "label_smoothing", "precision", "class_weighting", "aug_rotation_deg"):
        assert tuned[name] == DEFAULTS[name]
    assert not isinstance(tuned["image_size"], tune.search.sample.Domain)


def test_search_settings_mode_and_epochs(tmp_path):
    space = load_space(space_file(tmp_path, SPACE))
    assert space.search == SearchSettings(metric="val_loss", num_samples=4, gpus_per_worker=0.5)
    assert space.mode == "min" and space.max_epochs == 4
    assert space.finite_values("backbone") == ["baseline_cnn", "resnet18"]
    assert space.finite_values("lr") == [] and space.finite_values("batch_size") == [16]


def test_a_params_only_file_gets_the_default_search(tmp_path):
    space = load_space(space_file(tmp_path, "params: {epochs: 2}\n"))
    assert space.search == SearchSettings() and space.mode == "max" and space.max_epochs == 2


def test_malformed_yaml_names_the_file(tmp_path):
    path = space_file(tmp_path, "params:\n  lr: {loguniform: [1.0e-4, \n")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    assert str(path) in str(err.value) and "not valid YAML" in str(err.value)


def test_missing_file_and_missing_params_section(tmp_path):
    with pytest.raises(SpaceError, match="does not exist"):
        load_space(tmp_path / "nope.yaml")
    with pytest.raises(SpaceError, match="with a `params` section"):
        load_space(space_file(tmp_path, "search: {num_samples: 2}\n"))
    with pytest.raises(SpaceError, match="unknown top-level key.*searh"):
        load_space(space_file(tmp_path, "searh: {}\nparams: {}\n"))


def test_unknown_search_key_is_named(tmp_path):
    path = space_file(tmp_path, "search: {num_trials: 4}\nparams: {}\n")
    with pytest.raises(SpaceError) as err:
        load_space(path)
    msg = str(err.value)
    assert f"{path}: search.num_trials: unknown setting" in msg and "num_samples" in msg


@pytest.mark.parametrize("section", ["[num_samples, 4]", "4", "fast"])
def test_non_mapping_search_section_is_refused(tmp_path, section):
    path = space_file(tmp_path, f"search: {section}\nparams: {{}}\n")
    with pytest.raises(SpaceError, match="search must be a mapping"):
        load_space(path)


@pytest.mark.parametrize("setting, value, words", [
    ("reduction_factor", 1, "expected a number >= 1.5"),
    ("num_samples", 0, "expected a whole number >= 1"),
    ("max_concurrent", 2.5, "expected a whole number >= 1"),
    ("cpus_per_worker", 0, "expected a number > 0"),
    ("grace_period", True, "expected a whole number >= 1"),
])
def test_bad_search_values_are_named(tmp_path, setting, value, words):
    with pytest.raises(SpaceError, match=rf"search\.{setting}: {words}"):
        load_space(space_file(tmp_path, f"search: {{{setting}: {str(value).lower()}}}\nparams: {{}}\n"))


def test_bool_parameter_needs_choice_not_a_range(tmp_path):
    with pytest.raises(SpaceError, match=r"params\.aug_hflip\.uniform: aug_hflip is not numeric; use choice"):
        load_space(space_file(tmp_path, "params: {aug_hflip: {uniform: [0, 1]}}\n"))
    with pytest.raises(SpaceError, match="expected true or false"):
        load_space(space_file(tmp_path, "params: {aug_hflip: 1}\n"))


def test_randint_on_a_float_parameter_is_refused(tmp_path):
    with pytest.raises(SpaceError, match="randint needs a whole-number parameter; lr is float"):
        load_space(space_file(tmp_path, "params: {lr: {randint: [1, 3]}}\n"))


def test_nan_learning_rate_is_refused(tmp_path):
    with pytest.raises(SpaceError, match=r"params\.lr"):
        load_space(space_file(tmp_path, "params: {lr: .nan}\n"))


def test_infinite_epochs_is_a_space_error(tmp_path):
    with pytest.raises(SpaceError, match=r"params\.epochs"):
        load_space(space_file(tmp_path, "params: {epochs: .inf}\n"))
