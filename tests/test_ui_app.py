"""ui.app: the app builds its three tabs, listens on loopback by default, and warns when exposed."""

from __future__ import annotations

import pytest

from ui.app import build_app, exposure_warning, is_loopback, launch_kwargs, main, parse_args
from ui.context import AppContext
from ui.paths import Roots


def test_defaults_are_loopback_port_7860_and_no_auth():
    args = parse_args([])
    assert (args.host, args.port, args.auth, args.root) == ("127.0.0.1", 7860, None, [])
    assert parse_args(["--root", "a", "--root", "b"]).root == ["a", "b"]


@pytest.mark.parametrize("host,loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                           ("::1", True), ("0.0.0.0", False), ("192.168.1.5", False),
                                           ("example.org", False)])
def test_loopback_detection(host, loopback):
    assert is_loopback(host) is loopback


def test_a_non_loopback_host_without_auth_is_warned_about_loudly():
    assert exposure_warning("127.0.0.1", None) is None
    assert exposure_warning("0.0.0.0", ("me", "pw")) is None
    warning = exposure_warning("0.0.0.0", None)
    assert "WARNING" in warning and "--auth" in warning and "0.0.0.0" in warning


def test_bad_auth_and_bad_root_exit_2(capsys, tmp_path):
    assert main(["--auth", "nopassword"]) == 2
    assert "USER:PASS" in capsys.readouterr().err
    assert main(["--root", str(tmp_path / "missing")]) == 2
    assert "--root" in capsys.readouterr().err


def test_the_app_has_the_three_tabs_and_serves_only_the_roots(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.yaml").write_text("name: p\n")
    ctx = AppContext(roots=Roots.of(tmp_path))
    app = build_app(ctx)
    config = app.get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "tabitem"}
    assert {"Dataset", "Train", "Preview"} <= labels
    kwargs = launch_kwargs(ctx)
    assert kwargs["allowed_paths"] == [str(tmp_path.resolve())]
    assert kwargs["max_file_size"] == ctx.limits.max_file_bytes


def test_the_app_has_an_adapters_tab_and_hides_advanced_options_that_do_not_apply(tmp_path):
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "p.yaml").write_text("name: p\n")  # mode standard, no buckets, no reg_dir
    config = build_app(AppContext(roots=Roots.of(tmp_path))).get_config_file()
    labels = {c.get("props", {}).get("label") for c in config["components"] if c.get("type") == "tabitem"}
    assert "Adapters" in labels
    visible = {c["props"].get("elem_id"): c["props"].get("visible") for c in config["components"]
               if c.get("props", {}).get("elem_id")}
    assert visible["train-section-lcm"] is False and visible["train-section-data"] is not False
    assert visible["cfg-data-bucket_max"] is False and visible["cfg-data-reg_weight"] is False
    assert visible["cfg-train-lr"] is not False and visible["cfg-data-buckets"] is not False
