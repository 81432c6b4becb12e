import dataclasses

import pytest

from unlearnkit.config import Interval, Options, check_value
from unlearnkit.errors import InvalidConfigError
from unlearnkit.methods import list_methods, make_config, method_spec
from unlearnkit.training import Recipe


def test_interval_message_names_field_owner_and_range():
    with pytest.raises(InvalidConfigError) as e:
        Recipe(lr=-0.1)
    assert str(e.value) == "The 'lr' parameter of Recipe must be a float in the range (0.0, inf). Got -0.1 instead."


def test_options_message_lists_allowed_values():
    with pytest.raises(InvalidConfigError, match=r"'optimizer' parameter of Recipe must be one of 'adam', 'adamw', 'sgd'"):
        Recipe(optimizer="rmsprop")


@pytest.mark.parametrize("value, ok", [(1, True), (0, False), (1.5, False), (True, False), (None, False)])
def test_int_interval(value, ok):
    c = Interval(int, 1, None)
    assert c.accepts(value) is ok


def test_check_value_accepts_any_listed_constraint():
    check_value("X", "a", None, [Interval(float, 0, 1), None])
    check_value("X", "a", "x", [Options("x", "y")])
    with pytest.raises(InvalidConfigError, match="must be a float in the range \\[0.0, 1.0\\] or None"):
        check_value("X", "a", 2.0, [Interval(float, 0, 1), None])


@pytest.mark.parametrize("name", list_methods())
def test_every_method_config_declares_constraints_for_its_fields(name):
    config_class = method_spec(name).config_class
    fields = {f.name for f in dataclasses.fields(config_class)}
    assert set(config_class.all_constraints()) <= fields
    missing = fields - set(config_class.all_constraints())
    assert not missing, f"{config_class.__name__} has unvalidated fields {missing}"


@pytest.mark.parametrize("name", list_methods())
def test_config_round_trip_and_unknown_keys(name):
    config = make_config(name)
    values = config.to_dict()
    assert values["method"] == name
    assert make_config(name, values) == config
    with pytest.raises(InvalidConfigError, match="Unknown parameter"):
        make_config(name, not_a_field=1)
