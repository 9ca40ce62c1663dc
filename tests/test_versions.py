"""The supported library versions: the installed set is inside pyproject's ranges, and one outside is one line."""

import subprocess
import sys

import pytest

from sdlora import versions
from sdlora.errors import SdloraError


def test_the_installed_set_is_inside_the_supported_ranges():
    # The suite runs on constraints.txt: a pin that drifted outside pyproject's ranges fails here.
    assert versions.unsupported_versions() == []


def test_a_library_outside_its_range_is_named_with_its_version(monkeypatch):
    real = versions.metadata.version
    monkeypatch.setattr(versions.metadata, "version",
                        lambda name: "99.0.0" if name == "transformers" else real(name))
    with pytest.raises(SdloraError) as err:
        versions.check_versions()
    message = str(err.value)
    assert "transformers 99.0.0 (supported: " in message and "constraints.txt" in message and "\n" not in message


def test_constraints_pin_every_requirement_inside_its_range():
    from pathlib import Path

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parents[1]
    pins = {}
    for line in (root / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            pins[name.lower().replace("_", "-")] = version
    for line in versions.metadata.requires("sdlora"):
        req = Requirement(line)
        if req.marker is not None and "extra" in str(req.marker):
            continue
        name = req.name.lower().replace("_", "-")
        if name == "torch":  # installed first, on its own (CPU or CUDA build): not pinned in constraints
            continue
        assert name in pins, f"constraints.txt does not pin {name}"
        assert req.specifier.contains(pins[name], prereleases=True), (name, pins[name], str(req.specifier))


def test_the_cli_refuses_to_start_on_an_unsupported_set(tmp_path):
    # A fake newer diffusers ahead of the real one on the path: the command names it and exits 2.
    fake = tmp_path / "site"
    (fake / "diffusers-9.0.0.dist-info").mkdir(parents=True)
    (fake / "diffusers-9.0.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: diffusers\nVersion: 9.0.0\n")
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(fake)!r}); "
                          "from sdlora.cli import main; sys.exit(main(['models']))"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [run.stderr.strip()]
    assert "diffusers 9.0.0 (supported: " in run.stderr
