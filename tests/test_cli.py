"""The ``paperline`` command line: hostile input is refused before any work, failures end in one
clear line with the right exit status, and ``show`` / ``--cfg job`` are readable at 80 columns.

Issue 11 items 4, 5, 6 and 8 and issue 10 item 15. The property tests feed random bytes and
random YAML documents as params files and random ``--set`` keys and values to the CLI entry
(``flows.cli.main`` in-process, plus a few real ``paperline`` processes): every invalid input
exits 2 with ``<where>: <message>`` lines and no traceback, and never reaches the Prefect
server or the flow — both are replaced by a tripwire that fails the test. An input that happens
to be a valid config must reach the tripwire, and only then.
"""
from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flows import FLOWS, FlowSpec
from tasks.common.artifacts import PROJECT_ROOT
from tasks.common.config import (
    MAX_ERROR_LINES, ConfigError, ConfigSection, DataError, FlowConfig, describe, load_config, validate,
)

CLI_FUZZ = settings(
    # PAPERLINE_FUZZ_EXAMPLES=500 for a longer hunt (the default keeps the suite quick)
    max_examples=int(os.environ.get("PAPERLINE_FUZZ_EXAMPLES", "40")), deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
#: one reported problem: `<where>: <message>`, nothing indented, no traceback frame
PROBLEM_LINE = re.compile(r"^\S[^\n]*?: \S[^\n]*$")


class WorkStarted(BaseException):
    """Raised by the tripwires; a BaseException so the CLI's own error handling cannot swallow it."""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No test here may write under the repository or start a server, Ray or a flow."""
    monkeypatch.setenv("PAPERLINE_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("PAPERLINE_NPU_CACHE", str(tmp_path / "npu_cache"))


@pytest.fixture
def tripwire(monkeypatch):
    """Replace everything that starts work (the Prefect server, the flow) by ``WorkStarted``."""
    import flows.cli as cli

    def started(*a, **k):
        raise WorkStarted("work started")

    monkeypatch.setattr(cli, "_with_server", started)
    monkeypatch.setattr(FlowSpec, "load_flow", started)
    return cli


def cli_call(argv: list[str], capsys) -> tuple[int | str, str, str]:
    """(exit status or "work", stdout, stderr) of ``paperline argv`` run in this process."""
    from flows.cli import main

    try:
        rc: int | str = main(argv)
    except WorkStarted:
        rc = "work"
    except SystemExit as e:  # argparse's own usage errors
        rc = e.code
    out, err = capsys.readouterr()
    return rc, out, err


def assert_refused(rc: int | str, out: str, err: str, *, one_line: bool = False) -> list[str]:
    """Exit 2, nothing on stdout, every stderr line a `<where>: <message>`, no traceback."""
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in out + err
    assert out == "", out
    lines = err.splitlines()
    assert lines and all(PROBLEM_LINE.match(line) for line in lines), err
    assert len(lines) <= MAX_ERROR_LINES, err
    if one_line:
        assert len(lines) == 1, err
    return lines


@pytest.fixture(scope="module")
def shipped() -> dict[str, tuple[type, dict, list[str]]]:
    """flow → (config class, its shipped section as JSON, dotted keys of its settings)."""
    out = {}
    for name, spec in FLOWS.items():
        cls = spec.load_config_class()
        cfg = load_config(name, cls)
        keys = [r["key"] for r in describe(cls, cfg) if r["kind"] == "field"]
        out[name] = (cls, cfg.model_dump(mode="json"), keys)
    return out


# ----------------------------------------------------------------------------- issue 11 items 4, 5


def test_a_missing_params_file_is_an_error_naming_it_not_a_default_run(tripwire, tmp_path, capsys):
    typo = tmp_path / "typo.yaml"
    lines = assert_refused(*cli_call(["run", "stun", "--params", str(typo)], capsys), one_line=True)
    assert lines == [f"{typo}: no such params file"]
    lines = assert_refused(*cli_call(["show", "stun", "--params", str(typo)], capsys), one_line=True)
    assert lines == [f"{typo}: no such params file"]


def test_a_params_file_without_the_flows_section_is_refused(tripwire, tmp_path, capsys):
    # Running the defaults here would silently ignore the file the user named.
    p = tmp_path / "p.yaml"
    p.write_text("animeceleb:\n  identities: 2\n")
    (line,) = assert_refused(*cli_call(["run", "stun", "--params", str(p)], capsys), one_line=True)
    assert line.startswith(f"{p}: no 'stun' section") and "animeceleb" in line
    p.write_text("sparsities: [0.5]\n")  # the section's keys without the section
    (line,) = assert_refused(*cli_call(["run", "stun", "--params", str(p)], capsys), one_line=True)
    assert "no 'stun' section" in line and "sparsities" in line


HOSTILE_FILES = [
    # (content, what the one line must say after "<path>")
    (b"- 1\n- 2\n", r": the top level must be a mapping of flow sections .*got a list$"),
    (b"just words\n", r": the top level must be a mapping .*got a str$"),
    (b"stun: [1, 2]\n", r": section 'stun' must be a mapping, got list$"),
    (b"stun:\n  sparsities: [0.4\n  seed: 1\n", r":3:\d+: invalid YAML: .*"),
    (b"stun:\n\tseed: 1\n", r":2:1: invalid YAML: .*"),
    (b"stun:\n  seed: !!int abc\n", r": invalid YAML: ValueError: .*"),
    (b"stun:\n  seed: !!python/object:os.system {}\n", r":2:\d+: invalid YAML: .*could not determine a constructor.*"),
    (b"stun:\n  model: caf\xe9\n", r": not UTF-8 text \(byte 0xe9 at offset 18\)$"),
    (b"\xff\xfe\x00s\x00t", r": not UTF-8 text \(byte 0xff at offset 0\)$"),
    (b"stun: {a: \x01}\n", r": invalid YAML: .*"),
    (b"a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b]\n"
     b"d: &d [*c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d]\n"
     b"f: &f [*e, *e, *e, *e, *e, *e, *e, *e]\nstun: {seed: *f}\n",
     r": more than \d+ YAML nodes once anchors are expanded; .*"),
    (b"stun: " + b"[" * 5000 + b"]" * 5000 + b"\n", r": (invalid YAML: nested too deeply|YAML nested deeper than \d+ levels.*)$"),
    (b"stun: &x [*x]\n", r": YAML nested deeper than \d+ levels .*"),
]


@pytest.mark.parametrize("content, expect", HOSTILE_FILES, ids=lambda v: repr(v)[:30] if isinstance(v, bytes) else "")
def test_hostile_params_files_end_in_one_line_naming_the_file(tripwire, tmp_path, capsys, content, expect):
    p = tmp_path / "params.yaml"
    p.write_bytes(content)
    for cmd in ("run", "show"):
        (line,) = assert_refused(*cli_call([cmd, "stun", "--params", str(p)], capsys), one_line=True)
        assert line.startswith(str(p)) and re.fullmatch(re.escape(str(p)) + expect, line), line


def test_a_directory_or_a_device_is_not_a_params_file(tripwire, tmp_path, capsys):
    (line,) = assert_refused(*cli_call(["run", "stun", "--params", str(tmp_path)], capsys), one_line=True)
    assert line == f"{tmp_path}: is a directory, not a params file"
    # /dev/zero would otherwise be read until memory runs out
    (line,) = assert_refused(*cli_call(["run", "stun", "--params", "/dev/zero"], capsys), one_line=True)
    assert line == "/dev/zero: not a regular file"


@pytest.mark.parametrize(
    "sets, expect",
    [
        (["seed=[1, 2"], r"--set seed: invalid YAML value '\[1, 2': .*"),
        (["seed={a: 1"], r"--set seed: invalid YAML value .*"),
        (["seed=a: b: c"], r"--set seed: invalid YAML value .*mapping values are not allowed here"),
        (["zoo=5", "zoo.steps=3"], r"--set zoo.steps: 'zoo' is already set to a value \(5\), so it has no key 'steps'"),
        (["zoo..steps=3"], r"--set zoo..steps: a key path needs a name between every pair of dots .*"),
        (["=3"], r"--set '': a key path needs a name .*"),
        (["novalue"], r"--set novalue: expected key=value"),
        (["sparsities.x=1"], r"stun\.sparsities: Input should be a valid list .*"),
        (["model.path=1"], r"stun\.model: Input should be a valid string .*"),
        (["lambda1=.inf"], r"stun\.lambda1: Input should be a finite number \(got inf\)"),
        (["zoo.lr=.nan"], r"stun\.zoo\.lr: Input should be a finite number \(got nan\)"),
        (["sparsities=[0.5, .nan]"], r"stun\.sparsities\.1: Input should be a finite number \(got nan\)"),
        (["lambda1=inf"], r"stun\.lambda1: Input should be a finite number .*"),  # the string "inf"
        (["bad\nkey=1"], r"stun\['bad\\nkey'\]: Extra inputs are not permitted \(got 1\)"),
    ],
)
def test_bad_set_values_end_in_one_line_naming_the_setting(tripwire, capsys, sets, expect):
    for cmd in ("run", "show"):
        (line,) = assert_refused(*cli_call([cmd, "stun", "--set", *sets], capsys), one_line=True)
        assert re.fullmatch(expect, line), line


def test_every_float_is_finite_in_every_flow(shipped):
    """Issue 11 item 6: NaN pose ranges, infinite weights and clocks fail at validation, naming the field."""
    for flow, override, field in [
        ("animeceleb", "pose.yaw=[.nan, 10]", "animeceleb.pose.yaw.0"),
        ("animeceleb", "test_fraction=-.inf", "animeceleb.test_fraction"),
        ("s3nas", "npu.clock_mhz=.inf", "s3nas.npu.clock_mhz"),
        ("s3nas", "width_choices=[1.0, .inf]", "s3nas.width_choices.1"),
        ("s3nas", "latency_lambda=.nan", "s3nas.latency_lambda"),
        ("reenact", "edtn.lr=.inf", "reenact.edtn.lr"),
        ("stun", "owl_M=.inf", "stun.owl_M"),
    ]:
        cls = shipped[flow][0]
        with pytest.raises(ConfigError) as e:
            load_config(flow, cls, overrides=[override])
        assert str(e.value).startswith(f"{field}: Input should be a finite number"), str(e.value)


class _Box(ConfigSection):
    width: float = 1.0


class _Toy(FlowConfig):
    box: _Box = _Box()
    ratio: float = 0.5
    n: int = 1

    def model_post_init(self, _):
        1 / (self.n - 1)  # a check written carelessly: it divides instead of refusing


def test_config_sections_refuse_inf_and_nan_even_as_strings_and_through_the_form():
    with pytest.raises(ConfigError, match=r"^toy\.box\.width: Input should be a finite number"):
        validate(_Toy, {"box": {"width": "inf"}, "n": 2}, flow="toy")
    # the path Prefect's form takes: plain pydantic, no validate()
    for bad in ({"ratio": float("nan"), "n": 2}, {"box": {"width": "-Infinity"}, "n": 2}):
        with pytest.raises(Exception, match="finite number"):
            _Toy.model_validate(bad)


def test_a_validator_that_raises_a_raw_error_becomes_one_config_line():
    with pytest.raises(ConfigError) as e:
        validate(_Toy, {"n": 1}, flow="toy")
    assert str(e.value) == "toy: a validator failed on these values: ZeroDivisionError: division by zero"
    assert isinstance(e.value.__cause__, ZeroDivisionError)  # -v shows where


def test_many_problems_are_capped_one_line_each(tripwire, capsys):
    sets = [f"zz_unknown_{i}=1" for i in range(40)]
    lines = assert_refused(*cli_call(["run", "stun", "--set", *sets], capsys))
    assert len(lines) == MAX_ERROR_LINES
    assert lines[-1] == f"stun: … and {40 - MAX_ERROR_LINES + 1} more problems"


# ----------------------------------------------------------------------------- issue 11 item 8


@pytest.fixture
def failing_run(monkeypatch):
    """``paperline run stun`` whose body raises the given exception (after validation passed)."""
    import flows.cli as cli

    def arm(exc: BaseException):
        def cmd_run(args):
            raise exc
        monkeypatch.setattr(cli, "cmd_run", cmd_run)

    return arm


def test_a_broken_record_is_exit_1_with_one_final_line_not_a_bare_key(failing_run, capsys):
    # a damaged render_runs.json used to print the bare word `wall_seconds` and exit 2
    failing_run(KeyError("wall_seconds"))
    rc, out, err = cli_call(["run", "stun"], capsys)
    assert rc == 1 and err == "stun: KeyError: 'wall_seconds'\n" and "Traceback" not in out + err


def test_other_failures_are_exit_1_traceback_only_under_verbose(failing_run, capsys):
    failing_run(RuntimeError("actor died\n  while rendering shard 3\n"))
    rc, out, err = cli_call(["run", "stun"], capsys)
    assert (rc, err) == (1, "stun: RuntimeError: actor died while rendering shard 3\n")
    for argv in (["-v", "run", "stun"], ["run", "stun", "-v"]):
        rc, out, err = cli_call(argv, capsys)
        assert rc == 1 and "Traceback (most recent call last)" in err
        assert err.splitlines()[-1] == "stun: RuntimeError: actor died while rendering shard 3"


def test_data_and_config_errors_raised_during_a_run_are_exit_2(failing_run, capsys):
    failing_run(DataError("data/animeceleb/shards/anime-0003.tar: 46 of 48 members (truncated)"))
    assert cli_call(["run", "stun"], capsys)[::2] == (2, "data/animeceleb/shards/anime-0003.tar: 46 of 48 members (truncated)\n")
    failing_run(ConfigError("stun.resources.device: 'cuda:3' requested but the cluster has no GPU"))
    assert cli_call(["run", "stun"], capsys)[::2] == (2, "stun.resources.device: 'cuda:3' requested but the cluster has no GPU\n")


def test_an_error_a_ray_step_raised_is_classified_by_its_cause(failing_run, capsys):
    from ray.exceptions import RayTaskError

    cause = DataError("render_runs.json: run 3 has no 'wall_seconds'")
    wrapped = RayTaskError("dataset", "Traceback (most recent call last):\n  ...\nDataError: ...", cause).as_instanceof_cause()
    failing_run(wrapped)
    assert cli_call(["run", "stun"], capsys)[::2] == (2, "render_runs.json: run 3 has no 'wall_seconds'\n")
    wrapped = RayTaskError("profile", "Traceback ...", OSError(28, "No space left on device")).as_instanceof_cause()
    failing_run(wrapped)
    assert cli_call(["run", "stun"], capsys)[::2] == (1, "stun: OSError: [Errno 28] No space left on device\n")


def test_interrupt_is_130(failing_run, capsys):
    failing_run(KeyboardInterrupt())
    assert cli_call(["run", "stun"], capsys)[::2] == (130, "stun: interrupted\n")


def test_an_unknown_flow_is_2_with_the_known_ones(tripwire, capsys):
    for cmd in ("run", "show"):
        (line,) = assert_refused(*cli_call([cmd, "nope"], capsys), one_line=True)
        assert line == "unknown flow 'nope'; known: " + ", ".join(sorted(FLOWS))


# ----------------------------------------------------------------------------- the property tests


SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(),
                    st.text(max_size=16), st.sampled_from(["inf", "-.inf", ".nan", "2:4", "~", "yes", "0x1f", "1e9"]))
YAML_VALUES = st.recursive(
    SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12)


def set_dotted(doc: dict, key: str, value: Any) -> dict:
    doc = yaml.safe_load(yaml.safe_dump(doc))  # deep copy
    node = doc
    parts = key.split(".")
    for p in parts[:-1]:
        if not isinstance(node.get(p), dict):
            node[p] = {}
        node = node[p]
    node[parts[-1]] = value
    return doc


@st.composite
def params_texts(draw, flow: str, base: dict, keys: list[str]) -> str:
    """A params file: random YAML, a random section, or the shipped one with one setting
    replaced by a random value (mostly invalid, sometimes valid); now and then cut short."""
    kind = draw(st.sampled_from(["anything", "section", "one setting", "one setting"]), label="kind")
    if kind == "anything":
        doc: Any = draw(YAML_VALUES)
    elif kind == "section":
        doc = {flow: draw(YAML_VALUES), **draw(st.dictionaries(st.text(max_size=8), YAML_VALUES, max_size=2))}
    else:
        key = draw(st.one_of(st.sampled_from(keys), st.text(min_size=1, max_size=10)), label="key")
        doc = {flow: set_dotted(base, key, draw(YAML_VALUES, label="value"))}
    text = yaml.safe_dump(doc, allow_unicode=draw(st.booleans()), sort_keys=False)
    if draw(st.integers(0, 3)) == 0:
        text = text[: draw(st.integers(0, len(text)))]
    return text


def check_outcome(rc, out, err, flow: str, valid: bool) -> None:
    """Refused cleanly (exit 2), or the input was valid and only then did work start."""
    if rc == 2:
        assert not valid, f"a valid config was refused: {err}"
        assert_refused(rc, out, err)
        # The CLI's catch-all turned a validator's raw exception into a line; the validator
        # itself should have refused the value naming its field (issue 11 item 5).
        assert "a validator failed on these values" not in err, err
        event("refused")
    else:
        assert rc in ("work", 0) and valid, (rc, out, err)
        event("valid: reached the tripwire")


def is_valid(flow: str, cls: type, **kw) -> bool:
    try:
        load_config(flow, cls, **kw)
        return True
    except ConfigError:
        return False


@pytest.mark.parametrize("flow", sorted(FLOWS))
@CLI_FUZZ
@given(data=st.data())
def test_random_bytes_as_a_params_file_never_start_work(flow, data, shipped, tripwire, tmp_path, capsys):
    p = tmp_path / "random.yaml"
    p.write_bytes(data.draw(st.binary(max_size=400), label="bytes"))
    valid = is_valid(flow, shipped[flow][0], params_path=p)
    for cmd in ("run", "show"):
        check_outcome(*cli_call([cmd, flow, "--params", str(p)], capsys), flow, valid)


@pytest.mark.parametrize("flow", sorted(FLOWS))
@CLI_FUZZ
@given(data=st.data())
def test_random_yaml_params_files_never_start_work(flow, data, shipped, tripwire, tmp_path, capsys):
    cls, base, keys = shipped[flow]
    p = tmp_path / "random.yaml"
    p.write_text(data.draw(params_texts(flow, base, keys), label="params file"), encoding="utf-8")
    valid = is_valid(flow, cls, params_path=p)
    check_outcome(*cli_call(["run", flow, "--params", str(p)], capsys), flow, valid)
    check_outcome(*cli_call(["show", flow, "--params", str(p)], capsys), flow, valid)


@pytest.mark.parametrize("flow", sorted(FLOWS))
@CLI_FUZZ
@given(data=st.data())
def test_random_set_keys_and_values_never_start_work(flow, data, shipped, tripwire, capsys):
    cls, _, keys = shipped[flow]
    key = data.draw(st.one_of(st.sampled_from(keys), st.text(max_size=12)).filter(lambda k: not k.startswith("-")), label="key")
    value = data.draw(st.one_of(
        st.text(max_size=24),
        YAML_VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()),
    ), label="value")
    pair = f"{key}={value}"
    valid = is_valid(flow, cls, overrides=[pair])
    check_outcome(*cli_call(["run", flow, "--set", pair], capsys), flow, valid)


# ----------------------------------------------------------------------------- real processes


def test_the_installed_command_refuses_bad_input_in_one_line(tmp_path):
    """The console script itself (no monkeypatching): exit 2, one line on stderr, nothing started."""
    exe = Path(sys.executable).parent / "paperline"
    data = tmp_path / "data"
    env = {**os.environ, "PAPERLINE_DATA": str(data), "PAPERLINE_NPU_CACHE": str(tmp_path / "npu"),
           "PREFECT_API_URL": "http://127.0.0.1:9/api", "COLUMNS": "80"}
    (tmp_path / "list.yaml").write_text("- stun\n- s3nas\n")
    (tmp_path / "latin1.yaml").write_bytes(b"stun:\n  model: caf\xe9\n")
    cases = [
        (["run", "stun", "--params", "typo.yaml"], "typo.yaml: no such params file"),
        (["run", "s3nas", "--params", "list.yaml"], "list.yaml: the top level must be a mapping"),
        (["run", "stun", "--params", "latin1.yaml"], "latin1.yaml: not UTF-8 text"),
        (["run", "animeceleb", "--set", "pose.yaw=[.nan, 3]"], "animeceleb.pose.yaw.0: Input should be a finite number"),
        (["show", "reenact", "--set", "edtn.steps=[1,"], "--set edtn.steps: invalid YAML value"),
    ]
    for argv, start in cases:
        r = subprocess.run([str(exe), *argv], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2, (argv, r.stdout, r.stderr)
        assert r.stdout == "" and "Traceback" not in r.stderr
        assert len(r.stderr.splitlines()) == 1 and r.stderr.startswith(start), (argv, r.stderr)
    assert not data.exists(), "a refused run created its data folder"


# ----------------------------------------------------------------------------- issue 10 item 15


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_show_fits_80_columns_with_every_setting_as_a_dotted_key(flow, shipped, tripwire, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    cls, base, keys = shipped[flow]
    rc, out, err = cli_call(["show", flow], capsys)
    assert rc == 0 and err == ""
    lines = out.splitlines()
    assert max(map(len, lines)) <= 80, [line for line in lines if len(line) > 80]
    heads = [line.split(":", 1)[0] for line in lines if line and not line.startswith(" ")]
    for key in keys:
        assert key in heads, f"{key} is not listed"
    assert "resources.device" in heads and "resources" not in keys
    # resources is the flows' one shared section: never a nested section's own
    assert not [k for k in keys if ".resources." in k], [k for k in keys if ".resources." in k]


def test_show_lists_choices_bounds_value_and_default(tripwire, monkeypatch, capsys, shipped):
    monkeypatch.setenv("COLUMNS", "80")
    rc, out, _ = cli_call(["show", "stun", "--set", "zoo.steps=5", "budget=global"], capsys)
    assert rc == 0
    blocks = {b.split("\n", 1)[0]: b for b in out.split("\n\n")}
    assert "stun (StunConfig): STUN" in out and "--set zoo.steps=5 budget=global" in out
    steps = blocks["zoo.steps: int, in [1, 1000000]"].splitlines()
    assert steps[1:3] == ["    = 5", "    default: 600"] and steps[3].startswith("    Optimizer steps")
    assert blocks["budget: uniform | global"].splitlines()[1:3] == ["    = global", "    default: uniform"]
    assert blocks["expert_fraction: float, in [0.0, 1.0)"].splitlines()[1] == "    = 0.25  (the default)"
    assert any(h.startswith("unstructured: list of (wanda | owl | magnitude), ") for h in blocks)
    assert "[zoo] Architecture and training recipe" in out
    # narrower terminals wrap too, descriptions included
    monkeypatch.setenv("COLUMNS", "50")
    rc, out, _ = cli_call(["show", "reenact"], capsys)
    assert rc == 0 and max(map(len, out.splitlines())) <= 50


@pytest.mark.parametrize("argv", [["run", "{flow}", "--cfg", "job"], ["show", "{flow}", "--resolved"]])
@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_the_resolved_config_prints_as_a_params_file_and_runs_nothing(flow, argv, shipped, tripwire, tmp_path, capsys):
    cls, base, keys = shipped[flow]
    leaf = next(k for k in keys if k.endswith("seed") or k == "seed")
    argv = [a.format(flow=flow) for a in argv] + ["--set", f"{leaf}=7"]
    rc, out, err = cli_call(argv, capsys)
    assert (rc, err) == (0, "")
    doc = yaml.safe_load(out)
    assert list(doc) == [flow]
    node = doc[flow]
    for part in leaf.split("."):
        node = node[part]
    assert node == 7
    # it is a params file: read back, it is the same config
    p = tmp_path / "resolved.yaml"
    p.write_text(out)
    assert load_config(flow, cls, params_path=p) == load_config(flow, cls, overrides=[f"{leaf}=7"])
    # and a bad override is refused before anything prints
    assert_refused(*cli_call([*argv, "zz_unknown=1"], capsys), one_line=True)
