"""ui.applies: options that cannot matter are hidden, and every rule names options that exist."""

from __future__ import annotations

from ui.applies import RULES, applies, dependents
from ui.config_form import config_fields


def test_every_rule_names_real_options():
    keys = [f.key for f in config_fields()]
    for target, (controller, _) in RULES.items():
        assert controller in keys, controller
        assert target in keys or any(k.startswith(target) for k in keys), target


def test_options_follow_the_setting_they_depend_on():
    assert not applies("lcm.w_min", {"mode": "standard"}) and applies("lcm.w_min", {"mode": "lcm"})
    assert not applies("data.bucket_max", {"data.buckets": False}) and applies("data.bucket_max", {"data.buckets": True})
    assert not applies("train.text_encoder_lr", {"network.text_encoder": False})
    assert not applies("data.reg_weight", {"data.reg_dir": ""}) and applies("data.reg_weight", {"data.reg_dir": "r"})
    assert applies("train.lr", {})  # no rule: always shown
    deps = dependents([f.key for f in config_fields()])
    assert set(deps["data.buckets"]) == {"data.bucket_min", "data.bucket_max", "data.bucket_step"}
    assert all(k.startswith("lcm.") for k in deps["mode"])
