"""ExperimentSpec from TOML and flags (kvmctl.experiment.spec, .cmd) and the memcg squeeze target."""

from __future__ import annotations

import argparse

import pytest

from kvmctl.errors import UsageError
from kvmctl.commands import experiment as cmd
from kvmctl.experiment.spec import ExperimentSpec, parse_ager_options
from kvmctl.kvm import BackingKind

MiB = 1 << 20


def args_of(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cmd.set_argparser(parser)
    return parser.parse_args(list(argv))


def write(tmp_path, text: str):
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_defaults_are_the_issue_experiment():
    spec = ExperimentSpec()
    spec.validate()
    m = spec.machine_spec()
    assert m.mem_bytes == 512 * MiB and m.backing is BackingKind.FILE and m.memslots == 1
    # a fixed memcg target every pass and a hot quarter that moves on every pass: every pass has work
    assert (spec.ager, spec.pattern, spec.ager_options) == ("memcg", "moving:0.25:1", {"squeeze_guest": 0.5})
    assert spec.passes >= 3 and spec.mode == "concurrent"


def test_toml_file_with_an_ager_table(tmp_path):
    path = write(tmp_path, """
mem = "1G"
vcpus = 2
memslots = 2
backing = "memfd"
pattern = "random:0.5"
share = true
epochs-per-pass = 3
mode = "between"
settle = 2

[ager]
name = "memcg"
squeeze = 0.25
steps = 4
""")
    spec = ExperimentSpec.from_toml(path)
    spec.validate()
    assert (spec.mem, spec.vcpus, spec.memslots, spec.backing) == ("1G", 2, 2, "memfd")
    assert (spec.pattern, spec.share, spec.epochs_per_pass, spec.mode) == ("random:0.5", True, 3, "between")
    assert spec.settle == "2"  # a bare number is a duration in seconds
    assert spec.ager == "memcg" and spec.ager_options == {"squeeze": 0.25, "steps": 4}
    assert spec.machine_spec().mem_bytes == 1024 * MiB


def test_ager_given_as_a_plain_name_keeps_the_default_options():
    spec = ExperimentSpec.from_mapping({"ager": "passive"})
    assert spec.ager == "passive"


def test_from_mapping_leaves_the_callers_mapping_alone():
    data = {"ager": {"name": "damon"}, "mem": "64M"}
    ExperimentSpec.from_mapping(data)
    assert data == {"ager": {"name": "damon"}, "mem": "64M"}


def test_unknown_key_names_the_known_ones(tmp_path):
    with pytest.raises(UsageError) as err:
        ExperimentSpec.from_toml(write(tmp_path, 'memory = "1G"\n'))
    assert "unknown key 'memory'" in err.value.message
    assert "mem" in err.value.hint and "vcpus" in err.value.hint


@pytest.mark.parametrize("line", [
    'vcpus = "2"',  # a string for an int
    "vcpus = true",  # a bool is not a count
    "passes = 2.5",
    "share = 1",  # an int for a bool
    'populate = "yes"',
    "mem = true",
    "backing_path = true",
    "pattern = [1, 2]",
])
def test_wrong_types_are_refused(tmp_path, line):
    with pytest.raises(UsageError) as err:
        ExperimentSpec.from_toml(write(tmp_path, line + "\n"))
    assert "wrong type" in err.value.message and err.value.hint.startswith("give a ")


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(UsageError) as err:
        ExperimentSpec.from_toml(write(tmp_path, "mem = \n"))
    assert "not valid TOML" in err.value.message and err.value.hint
    with pytest.raises(UsageError) as err:
        ExperimentSpec.from_toml(tmp_path / "nope.toml")
    assert "does not exist" in err.value.message


@pytest.mark.parametrize("field,value,words", [
    ("mode", "sometimes", "mode"),
    ("passes", 0, "passes"),
    ("repeat", 0, "repeat"),
    ("access", "exec", "access"),
    ("settle", "soon", "settle"),
    ("pattern", "hotcold:2", "pattern"),
    ("mem", "3M", "memslot"),  # not whole 2 MiB units
])
def test_validate_refuses_bad_values(field, value, words):
    spec = ExperimentSpec()
    setattr(spec, field, value)
    with pytest.raises(UsageError) as err:
        spec.validate()
    assert words in err.value.message and err.value.hint


def test_flags_override_the_file(tmp_path):
    path = write(tmp_path, 'mem = "1G"\npasses = 5\nvcpus = 2\n[ager]\nname = "memcg"\nsqueeze_guest = 0.3\n')
    spec = cmd.spec_from_args(args_of("--spec", str(path), "--mem", "256M", "--mode", "between", "--no-trace"))
    assert (spec.mem, spec.passes, spec.vcpus, spec.mode, spec.trace) == ("256M", 5, 2, "between", False)
    assert spec.ager_options == {"squeeze_guest": 0.3}  # no ager flag: the file's options stay


def test_flags_alone_start_from_the_defaults():
    spec = cmd.spec_from_args(args_of("--mem", "64M", "--passes", "1", "--no-populate", "--share"))
    assert (spec.mem, spec.passes, spec.populate, spec.share) == ("64M", 1, False, True)
    assert spec.ager == "memcg" and spec.ager_options == {"squeeze_guest": 0.5}
    assert spec.trace is True  # not given: the default, not argparse's None


def test_another_ager_flag_drops_the_memcg_default_options():
    spec = cmd.spec_from_args(args_of("--ager", "passive"))
    assert spec.ager == "passive" and spec.ager_options == {}
    spec = cmd.spec_from_args(args_of("--ager", "damon", "--ager-opt", "sample_us=5000"))
    assert spec.ager_options == {"sample_us": 5000}


def test_squeeze_flag_replaces_every_squeeze_option(tmp_path):
    path = write(tmp_path, '[ager]\nname = "memcg"\nsqueeze = 0.2\nsqueeze_guest = 0.3\nsteps = 8\n')
    spec = cmd.spec_from_args(args_of("--spec", str(path), "--squeeze", "0.75"))
    assert spec.ager_options == {"squeeze_guest": 0.75, "steps": 8}


def test_a_target_ager_opt_replaces_the_default_target():
    """--ager-opt target_bytes=... must not be overruled by the default squeeze_guest."""
    spec = cmd.spec_from_args(args_of("--ager-opt", "target_bytes=4096", "--ager-opt", "steps=4"))
    assert spec.ager_options == {"target_bytes": 4096, "steps": 4}
    with pytest.raises(UsageError, match="both set the squeeze's target"):
        cmd.spec_from_args(args_of("--ager-opt", "squeeze=0.2", "--ager-opt", "target_bytes=4096"))


def test_ager_opt_values_become_numbers_when_they_are():
    assert parse_ager_options(["steps=8", "squeeze=0.5", "mode=fast", "target_bytes=1048576"]) == {
        "steps": 8, "squeeze": 0.5, "mode": "fast", "target_bytes": 1 << 20}
    for bad in ("steps", "=3"):
        with pytest.raises(UsageError) as err:
            parse_ager_options([bad])
        assert "key=value" in err.value.message


def test_squeeze_guest_becomes_a_target_below_the_usage():
    spec = ExperimentSpec(mem="512M")
    # usage after populate: the guest's 512 MiB plus 40 MiB of the VM process itself
    opts = spec.ager_options_for(552 * MiB, 512 * MiB)
    assert opts == {"target_bytes": 552 * MiB - 256 * MiB}  # half the guest taken away
    spec.ager_options = {"squeeze_guest": 1.0, "steps": 4}
    assert spec.ager_options_for(100 * MiB, 512 * MiB) == {"target_bytes": 4096, "steps": 4}  # never below a page
    assert spec.ager_options == {"squeeze_guest": 1.0, "steps": 4}  # the spec is not consumed


def test_nested_runs_the_svm_payload_at_cpl0_between_passes():
    from kvmctl.errors import UsageError
    from kvmctl.experiment.spec import ExperimentSpec

    spec = ExperimentSpec(nested=True, mode="between", pattern="seq")
    spec.validate()
    m = spec.machine_spec()
    assert (m.payload, m.cpl) == ("nested_svm", 0)
    for bad in (dict(mode="concurrent", pattern="seq"), dict(mode="between", pattern="hotcold:0.25")):
        with pytest.raises(UsageError, match="--nested"):
            ExperimentSpec(nested=True, **bad).validate()
