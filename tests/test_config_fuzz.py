"""Property-based fuzzing (hypothesis) of every flow config in ``FLOWS``.

Each flow's pydantic config is walked through its own JSON schema (the same schema Prefect
turns into the dashboard form), so a field added to any config — or a flow added to
``FLOWS`` — is fuzzed with no change here. Two properties:

* **invalid values** (wrong types, out-of-range numbers, NaN and ±inf, unknown enum members,
  too-short lists, unknown keys, at any nesting depth) are rejected by ``load_config`` — given as a
  dict, through a ``params.yaml`` file and as a ``--set`` string — with a ``ConfigError`` that
  names ``<flow>.<field path>``, and the Prefect form schema rejects them too;
* **valid values** (inside the schema's constraints, one field varied from the shipped
  defaults, so cross-field rules mostly hold) either build a config that round-trips unchanged
  through ``params.yaml``, ``--set`` and the form (JSON schema + Prefect's own parameter
  validation), or — when a validator or cross-field rule refuses them — fail with a message
  that names the varied field.
"""
from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from flows import FLOWS
from tasks.common.config import ConfigError, load_config, validate

FUZZ = settings(
    max_examples=30, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much],
)
WORDS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=8)
# Strings no pydantic coercion turns into a number, bool or enum member ("zz" is no YAML keyword).
JUNK = WORDS.map(lambda s: "zz" + s)
TEXT = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABC0123456789_-./: ", min_size=0, max_size=12)


@pytest.fixture(scope="module", autouse=True)
def _isolated_npu_cache(tmp_path_factory):
    """s3nas's latency-target check simulates the NPU: keep those simulations out of data/."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PAPERLINE_NPU_CACHE", str(tmp_path_factory.mktemp("npu_cache")))
    mp.setenv("PAPERLINE_DATA", str(tmp_path_factory.mktemp("data")))
    yield
    mp.undo()


# ----------------------------------------------------------------------------- schema walking


class Flow:
    """One flow's config class, its shipped values, its JSON schema and its Prefect form."""

    _cache: dict[str, "Flow"] = {}

    def __init__(self, name: str):
        spec = FLOWS[name]
        self.name = name
        self.cls = spec.load_config_class()
        self.base = load_config(name, self.cls).model_dump(mode="json")
        self.schema = self.cls.model_json_schema()
        self.flow = spec.load_flow()
        self.form = self.flow.parameters.model_dump_for_openapi()
        self.form_validator = jsonschema.Draft202012Validator(self.form)
        # leaves: (path, schema, default) of every scalar/list field; objects: nested sections
        self.leaves: list[tuple[tuple[str, ...], dict, Any]] = []
        self.objects: list[tuple[tuple[str, ...], dict]] = []
        self._walk((), self.schema, self.base)

    @classmethod
    def get(cls, name: str) -> "Flow":
        if name not in cls._cache:
            cls._cache[name] = Flow(name)
        return cls._cache[name]

    def resolve(self, s: dict) -> dict:
        while "$ref" in s:
            s = self.schema["$defs"][s["$ref"].rsplit("/", 1)[1]]
        return s

    def _walk(self, path: tuple[str, ...], s: dict, value: Any) -> None:
        s = self.resolve(s)
        if "properties" in s:
            self.objects.append((path, s))
            for key, sub in s["properties"].items():
                self._walk(path + (key,), sub, value[key])
        else:
            self.leaves.append((path, s, value))

    def dotted(self, path: tuple[str, ...]) -> str:
        return f"{self.name}.{'.'.join(path)}"


def set_path(doc: dict, path: tuple[str, ...], value: Any) -> dict:
    doc = copy.deepcopy(doc)
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return doc


def as_set_value(value: Any) -> str:
    """The YAML a user types after ``--set key=``."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("...\n").strip()


def types_of(s: dict) -> set[str]:
    if "anyOf" in s:
        return {t for sub in s["anyOf"] for t in types_of(sub)}
    if "enum" in s or "const" in s:
        return {"enum"}
    return {s.get("type", "any")}


def _num_bounds(s: dict, default: Any, integer: bool) -> tuple[float, float, bool, bool]:
    """Valid range; an open side is kept near the default so runs stay cheap (SCALE-Sim)."""
    spread = abs(default) * 4 + 16 if isinstance(default, (int, float)) and not isinstance(default, bool) else 64
    lo, lo_x = s.get("minimum"), False
    if "exclusiveMinimum" in s:
        lo, lo_x = s["exclusiveMinimum"], True
    hi, hi_x = s.get("maximum"), False
    if "exclusiveMaximum" in s:
        hi, hi_x = s["exclusiveMaximum"], True
    if lo is None:
        lo = (hi if hi is not None else 0) - spread
    if hi is None:
        hi = lo + spread
    if integer:
        lo, hi = (math.floor(lo) + 1 if lo_x else math.ceil(lo)), (math.ceil(hi) - 1 if hi_x else math.floor(hi))
        lo_x = hi_x = False
    return lo, hi, lo_x, hi_x


def valid_values(s: dict, default: Any, resolve) -> st.SearchStrategy:
    s = resolve(s)
    if "anyOf" in s:
        return st.one_of(*[valid_values(sub, default, resolve) for sub in s["anyOf"]])
    if "enum" in s:
        return st.sampled_from(s["enum"])
    if "const" in s:
        return st.just(s["const"])
    t = s.get("type")
    if t == "null":
        return st.none()
    if t == "boolean":
        return st.booleans()
    if t == "integer":
        lo, hi, _, _ = _num_bounds(s, default, True)
        return st.integers(lo, hi)
    if t == "number":
        lo, hi, lo_x, hi_x = _num_bounds(s, default, False)
        return st.floats(lo, hi, exclude_min=lo_x, exclude_max=hi_x, allow_nan=False, allow_infinity=False)
    if t == "string":
        text = st.from_regex(s["pattern"], fullmatch=True) if "pattern" in s else TEXT
        return st.one_of(st.just(default), text) if isinstance(default, str) else text
    if t == "array":
        lo_n = s.get("minItems", 0)
        if "prefixItems" in s:
            d = default if isinstance(default, list) and len(default) == len(s["prefixItems"]) else [None] * len(s["prefixItems"])
            return st.tuples(*[valid_values(it, di, resolve) for it, di in zip(s["prefixItems"], d)]).map(list)
        item_default = default[0] if isinstance(default, list) and default else None
        from_schema = st.lists(valid_values(s.get("items", {}), item_default, resolve),
                               min_size=lo_n, max_size=s.get("maxItems", lo_n + 4))
        if isinstance(default, list) and default:
            # Sub-lists of the shipped list: the way users edit vocabularies (morph names, baselines).
            sub = st.lists(st.sampled_from(default), unique_by=repr, min_size=max(lo_n, 1), max_size=len(default))
            return st.one_of(from_schema, sub)
        return from_schema
    return st.just(default)


def invalid_values(s: dict, resolve) -> st.SearchStrategy:
    """Values the field's schema (and so its pydantic type/constraints) rules out."""
    s = resolve(s)
    kinds = types_of(s)
    wrong: list[st.SearchStrategy] = [st.just({"zz": 1})]
    if not kinds & {"array"}:
        wrong.append(st.lists(st.integers(0, 3), min_size=1, max_size=2))
    if not kinds & {"string"}:
        wrong.append(JUNK)
    if kinds <= {"enum", "null"}:
        enum = [v for sub in s.get("anyOf", [s]) for v in resolve(sub).get("enum", [])]
        wrong.append(JUNK.filter(lambda v: v not in enum))
        wrong.append(st.integers(2, 99))
    for sub in s.get("anyOf", [s]):
        if "pattern" in resolve(sub):
            pattern = resolve(sub)["pattern"]
            wrong.append(TEXT.filter(lambda v: not re.fullmatch(pattern, v)))
    if kinds <= {"string", "null"} or kinds == {"boolean"}:
        wrong.append(st.integers(2, 99))  # pydantic turns no number into a str, and only 0/1 into a bool
    subs = [resolve(sub) for sub in s.get("anyOf", [s])]
    for sub in subs:
        t = sub.get("type")
        if t == "number":  # every float is finite: .inf passes `ge=0` and used to fail 45 s into a run
            wrong.append(st.sampled_from([math.inf, -math.inf, math.nan]))
        if t == "array":
            items = [resolve(it) for it in sub.get("prefixItems", [sub.get("items", {})])]
            if items and all(it.get("type") == "number" for it in items):
                wrong.append(st.sampled_from([math.inf, math.nan]).map(lambda x, n=len(items): [x] + [0.5] * (n - 1)))
        if t == "integer":
            wrong.append(st.floats(-1e6, 1e6).filter(lambda x: x != int(x)))
        if t in ("integer", "number") and "null" not in kinds:
            integer = t == "integer"
            if "minimum" in sub:
                m = sub["minimum"]
                wrong.append(st.integers(max_value=math.ceil(m) - 1) if integer else st.floats(max_value=m, exclude_max=True, allow_nan=False, allow_infinity=False))
            if "exclusiveMinimum" in sub:
                m = sub["exclusiveMinimum"]
                wrong.append(st.integers(max_value=math.floor(m)) if integer else st.floats(max_value=m, allow_nan=False, allow_infinity=False))
            if "maximum" in sub:
                m = sub["maximum"]
                wrong.append(st.integers(min_value=math.floor(m) + 1) if integer else st.floats(min_value=m, exclude_min=True, allow_nan=False, allow_infinity=False))
            if "exclusiveMaximum" in sub:
                m = sub["exclusiveMaximum"]
                wrong.append(st.integers(min_value=math.ceil(m)) if integer else st.floats(min_value=m, allow_nan=False, allow_infinity=False))
        if t == "array" and "null" not in kinds:
            if sub.get("minItems", 0) > 0:
                wrong.append(st.just([]) if "prefixItems" not in sub else st.just([0.0] * (sub["minItems"] - 1)))
            items = resolve(sub.get("items", {}))
            if "enum" in items:
                wrong.append(st.lists(st.sampled_from(items["enum"]), max_size=2).flatmap(
                    lambda ok: JUNK.filter(lambda v: v not in items["enum"]).map(lambda bad: ok + [bad])))
            if "prefixItems" in sub:
                wrong.append(st.just([0.0] * (len(sub["prefixItems"]) + 1)))
    return st.one_of(*wrong)


# ----------------------------------------------------------------------------- helpers


def write_params(tmp: Path, flow: str, section: dict) -> Path:
    p = tmp / "params.yaml"
    p.write_text(yaml.safe_dump({flow: section}, sort_keys=False))
    return p


def assert_form_rejects(f: Flow, section: dict) -> None:
    errors = list(f.form_validator.iter_errors({"config": section}))
    assert errors, f"the Prefect form schema accepts invalid {section}"


def roundtrip(f: Flow, cfg: Any, path: tuple[str, ...], value: Any, tmp: Path) -> None:
    dumped = cfg.model_dump(mode="json")
    # params.yaml: the whole section written out and read back
    assert load_config(f.name, f.cls, params_path=write_params(tmp, f.name, dumped)) == cfg
    # --set: the shipped section plus one override typed as YAML
    base_file = write_params(tmp, f.name, f.base)
    assert load_config(f.name, f.cls, params_path=base_file, overrides=[f"{'.'.join(path)}={as_set_value(value)}"]) == cfg
    # the dashboard form: the JSON it submits satisfies the schema it renders, and Prefect's
    # own parameter validation hands the flow an equal config
    errors = [e.message for e in f.form_validator.iter_errors({"config": dumped})]
    assert not errors, errors
    assert f.flow.validate_parameters({"config": dumped})["config"] == cfg


# ----------------------------------------------------------------------------- properties


@pytest.mark.parametrize("flow", sorted(FLOWS))
def test_every_config_field_is_reached_by_the_fuzzer(flow):
    f = Flow.get(flow)
    top = {p[0] for p, _, _ in f.leaves}
    assert top == set(f.cls.model_fields), "a field the schema walk misses is a field nobody fuzzes"
    assert f.form["properties"]["config"], "the flow's parameter form lacks its config"


@pytest.mark.parametrize("flow", sorted(FLOWS))
@FUZZ
@given(data=st.data())
def test_invalid_values_are_rejected_naming_the_field(flow, data, tmp_path):
    f = Flow.get(flow)
    path, s, _ = data.draw(st.sampled_from(f.leaves), label="field")
    value = data.draw(invalid_values(s, f.resolve), label="value")
    section = set_path(f.base, path, value)
    with pytest.raises(ConfigError) as e:
        validate(f.cls, section, flow=flow)
    assert f.dotted(path) in str(e.value), str(e.value)
    # the same value from params.yaml and typed after --set
    with pytest.raises(ConfigError) as e:
        load_config(flow, f.cls, params_path=write_params(tmp_path, flow, section))
    assert f.dotted(path) in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(flow, f.cls, params_path=write_params(tmp_path, flow, f.base),
                    overrides=[f"{'.'.join(path)}={as_set_value(value)}"])
    assert f.dotted(path) in str(e.value)
    if not _non_finite_in(value):  # JSON (the form's language) has no inf/NaN to submit
        assert_form_rejects(f, section)


def _non_finite_in(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, (list, tuple)) and any(_non_finite_in(v) for v in value)


@pytest.mark.parametrize("flow", sorted(FLOWS))
@FUZZ
@given(data=st.data())
def test_unknown_keys_are_rejected_naming_the_key(flow, data, tmp_path):
    f = Flow.get(flow)
    path, s = data.draw(st.sampled_from(f.objects), label="section")
    key = data.draw(WORDS.map(lambda w: "zz_" + w), label="key")
    section = set_path(f.base, path + (key,), data.draw(st.one_of(st.integers(), TEXT), label="value"))
    with pytest.raises(ConfigError) as e:
        validate(f.cls, section, flow=flow)
    assert f.dotted(path + (key,)) in str(e.value) and "Extra inputs" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(flow, f.cls, params_path=write_params(tmp_path, flow, f.base), overrides=[f"{'.'.join(path + (key,))}=1"])
    assert f.dotted(path + (key,)) in str(e.value)
    assert_form_rejects(f, section)


@pytest.mark.parametrize("flow", sorted(FLOWS))
@FUZZ
@given(data=st.data())
def test_valid_values_round_trip_through_params_set_and_the_form(flow, data, tmp_path):
    f = Flow.get(flow)
    path, s, default = data.draw(st.sampled_from(f.leaves), label="field")
    value = data.draw(valid_values(s, default, f.resolve), label="value")
    try:
        cfg = validate(f.cls, set_path(f.base, path, value), flow=flow)
    except ConfigError as e:
        # A field validator or a cross-field rule refused it: the message must name a real
        # field of this config; the one varied, or (cross-field) the field the rule is about.
        named = re.findall(rf"^{re.escape(flow)}\.([\w.]+):", str(e), flags=re.M)
        assert named and all(n.split(".")[0] in f.cls.model_fields for n in named), str(e)
        varied_named = any(n == ".".join(path) for n in named) or path[-1] in str(e)
        event(f"refused by a validator: {'.'.join(path)}" + ("" if varied_named else " (another field named)"))
        return
    event("accepted")
    roundtrip(f, cfg, path, value, tmp_path)


@pytest.mark.parametrize(
    "flow, override, field",
    [
        # accepted before, then failed deep inside a run (numpy seeds must be >= 0)
        ("animeceleb", "seed=-1", "animeceleb.seed"),
        ("s3nas", "seed=-1", "s3nas.seed"),
        # accepted before, then failed in pick_device at the first torch step
        ("s3nas", "resources.device=gpu", "s3nas.resources.device"),
        ("stun", "resources.device=gpu", "stun.resources.device"),
        # accepted before, then failed 45 s into a run (issue 11 item 6)
        ("stun", "lambda1=.inf", "stun.lambda1"),
        ("stun", "zoo.lr=.nan", "stun.zoo.lr"),
        ("animeceleb", "pose.yaw=[.nan, 10]", "animeceleb.pose.yaw.0"),
        ("s3nas", "npu.clock_mhz=inf", "s3nas.npu.clock_mhz"),
        # accepted before, then failed when the zoo model was built (after corpus + tokenizer work)
        ("stun", "zoo.heads=3", "stun.zoo.heads"),
        ("stun", "zoo.kv_heads=3", "stun.zoo.kv_heads"),
    ],
)
def test_values_once_accepted_that_failed_mid_run_now_fail_before_any_work(flow, override, field):
    f = Flow.get(flow)
    with pytest.raises(ConfigError) as e:
        load_config(flow, f.cls, overrides=[override])
    assert field in str(e.value)
    assert load_config(flow, f.cls, overrides=["resources.device=cuda:1"] if "device" in override else []).model_dump()
