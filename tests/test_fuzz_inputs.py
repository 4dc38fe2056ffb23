"""Property-based fuzzing of every input reader with mutated copies of the real files.

Each case takes a real file from ``../shared/data`` (or the example configuration) and applies
one to three mutations chosen by hypothesis: truncation, a deleted, duplicated, blanked or
swapped line, a token replaced by a hostile one (NaN, inf, negative, zero, huge, text, CIF
syntax), a token dropped or inserted, or a corrupted byte. The reader must then either return a
result or raise :class:`~edrefine.errors.InputError` whose message is one line naming the file;
any other exception is a bug. A few cases go through the command line and must exit 0 or 2
with at most one line on standard error and no traceback.

The number of cases per reader is ``EDREFINE_FUZZ_EXAMPLES`` (default 40); the documented
fuzzing run (docs/robustness.md) is::

    EDREFINE_FUZZ_EXAMPLES=3400 python -m pytest tests/test_fuzz_inputs.py -p no:cacheprovider --hypothesis-show-statistics
"""

from __future__ import annotations

import contextlib
import io
import os
import pathlib

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from edrefine.cif import read_crystal
from edrefine.errors import InputError
from edrefine.pets import read_pets
from edrefine.refine_settings import read_refinement_table, refinement_settings
from edrefine.restraints import distance_restraints
from edrefine.settings import resolve_settings

pytestmark = pytest.mark.data

EXAMPLES = int(os.environ.get("EDREFINE_FUZZ_EXAMPLES", "40"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize="EDREFINE_FUZZ_SEED" not in os.environ,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EXAMPLE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "examples" / "refine.toml"
PETS_FILES = ("quartz/quartz.cif_pets", "glycine_ccp4/glycine_dyn.cif_pets", "glycine_ccp4/glycine.cif_pets",
              "malik2026_synthetic/quartz/quartz_paper_data.cif_pets")
CIF_FILES = ("quartz/quartz_kinematical.cif", "quartz/enantiomer_1.cif", "cspbbr3/cspbbr3.cif",
             "cspbbr3/cspbbr3_paper_table_s5_abs.cif", "glycine_ccp4/alpha_glycine.cif",
             "malik2026_synthetic/quartz/quartz_02_displacement.cif")
HOSTILE = ("nan", "NaN", "inf", "-inf", "-1", "0", "-0.0", "1e400", "1e-320", "99999999999999999999", "?", ".",
           "abc", "Xx", "'", '"', "_x", "loop_", "data_x", "#", ";", "[", "]", "{", "=", "true", "-", "1,2",
           "\"\"\"", "0.5(", "1e", "--", "🙂")
KINDS = ("truncate", "delete", "duplicate", "blank", "swap", "replace", "drop", "insert", "byte")


@st.composite
def mutations(draw):
    """A list of (kind, position in [0, 1), second position, token, byte value)."""
    count = draw(st.integers(1, 3))
    return [(draw(st.sampled_from(KINDS)), draw(st.floats(0, 1, exclude_max=True)),
             draw(st.floats(0, 1, exclude_max=True)), draw(st.sampled_from(HOSTILE)), draw(st.integers(0, 255)))
            for _ in range(count)]


def mutate(raw: bytes, steps) -> bytes:
    """Apply the mutation steps to the file's bytes."""
    for kind, where, other, token, byte in steps:
        if kind == "truncate":
            raw = raw[: int(where * len(raw))]
            continue
        if kind == "byte":
            if raw:
                position = int(where * len(raw))
                raw = raw[:position] + bytes([byte]) + raw[position + 1:]
            continue
        lines = raw.split(b"\n")
        i, j = int(where * len(lines)), int(other * len(lines))
        if kind == "delete":
            del lines[i]
        elif kind == "duplicate":
            lines.insert(i, lines[i])
        elif kind == "blank":
            lines[i] = b""
        elif kind == "swap":
            lines[i], lines[j] = lines[j], lines[i]
        else:
            tokens = lines[i].split()
            k = int(other * len(tokens))
            if kind == "replace" and tokens:
                tokens[k] = token.encode()
            elif kind == "drop" and tokens:
                del tokens[k]
            elif kind == "insert":
                tokens.insert(k, token.encode())
            lines[i] = b" ".join(tokens)
        raw = b"\n".join(lines)
    return raw


def assert_reads_or_one_line_error(read, path: pathlib.Path) -> None:
    """``read(path)`` returns, or raises InputError of one line that names ``path``."""
    try:
        read(path)
        event("read")
    except InputError as error:
        event("InputError")
        text = str(error)
        assert "\n" not in text, text
        assert str(path) in text, text
        if error.line is not None:
            lines = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n").count(b"\n") + 1
            assert 1 <= error.line <= lines, text


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> pathlib.Path:
    """One folder for the mutated copies of a module run (each case overwrites its file)."""
    return tmp_path_factory.mktemp("fuzz")


def _mutated_copy(source: pathlib.Path, steps, folder: pathlib.Path) -> pathlib.Path:
    path = folder / source.name
    path.write_bytes(mutate(source.read_bytes(), steps))
    return path


@FUZZ
@given(name=st.sampled_from(PETS_FILES), steps=mutations())
def test_mutated_pets_files_read_or_fail_in_one_line(shared_data, scratch, name, steps):
    assert_reads_or_one_line_error(read_pets, _mutated_copy(shared_data / name, steps, scratch))


@FUZZ
@given(name=st.sampled_from(CIF_FILES), steps=mutations())
def test_mutated_structure_files_read_or_fail_in_one_line(shared_data, scratch, name, steps):
    assert_reads_or_one_line_error(read_crystal, _mutated_copy(shared_data / name, steps, scratch))


def read_config(path: pathlib.Path):
    """Everything ``refine`` reads from a configuration file, restraints checked against quartz."""
    resolve_settings(path)
    table, restraints = read_refinement_table(path)
    refinement_settings(table, {}, str(path))
    if restraints:
        distance_restraints(read_crystal(EXAMPLE_CONFIG.parent / "quartz.cif"), restraints, source=str(path))


@FUZZ
@given(steps=mutations())
def test_mutated_configuration_files_read_or_fail_in_one_line(scratch, steps):
    assert_reads_or_one_line_error(read_config, _mutated_copy(EXAMPLE_CONFIG, steps, scratch))


VALUES = st.one_of(st.integers(-10**20, 10**20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=8), st.lists(st.integers(-3, 3), max_size=3),
                   st.dictionaries(st.sampled_from(["positions", "adp", "x"]), st.floats(-1, 1), max_size=2))


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


@FUZZ
@given(key=st.sampled_from(["gmax", "sgmax", "tilts", "tilt_rule", "rsg", "dsg", "form_factors", "absorption",
                            "thickness_step", "epochs", "thickness_model", "thickness_min", "refine",
                            "learning_rates", "batch_frames", "validation_fraction", "seed", "u_reset",
                            "memory_limit", "chunk_frames", "uncertainty_marginal", "start_width", "restraint"]),
       value=VALUES)
def test_every_setting_with_a_value_of_any_type_is_accepted_or_named(scratch, key, value):
    calculation = key in ("gmax", "sgmax", "tilts", "tilt_rule", "rsg", "dsg", "form_factors", "absorption",
                          "thickness_step")
    if key == "restraint":
        text = f"[[restraint]]\natoms = {_toml_value(value)}\ndistance = 1.6\n"
    else:
        text = ("" if calculation else "[refinement]\n") + f"{key} = {_toml_value(value)}\n"
    path = scratch / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    assert_reads_or_one_line_error(read_config, path)


@settings(max_examples=max(6, EXAMPLES // 8), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(steps=mutations(), which=st.sampled_from(["data", "structure"]))
def test_the_command_line_exits_0_or_2_with_one_line_and_no_traceback(shared_data, scratch, which, steps):
    from edrefine.cli import main

    structure = shared_data / "quartz/quartz_kinematical.cif"
    data = shared_data / "malik2026_synthetic/quartz/quartz_paper_data.cif_pets"
    if which == "data":
        data = _mutated_copy(data, steps, scratch)
    else:
        structure = _mutated_copy(structure, steps, scratch)
    out = scratch / "never-created"
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["refine", "--structure", str(structure), "--data", str(data), "--out", str(out), "--gmax", "1.0",
                  "--tilts", "1", "--check"])
            code = 0
        except SystemExit as exit_:
            code = exit_.code
    message = stderr.getvalue().strip()
    event(f"exit {code or 0}")
    assert code in (0, 2, None), (code, message)
    assert "Traceback" not in message
    assert len(message.splitlines()) <= 1, message
    if code == 2:
        assert message.startswith("edrefine: error: ")
    assert not out.exists()
