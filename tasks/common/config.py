"""Typed flow configs: one pydantic model per flow, defaults from its ``params.yaml`` section.

The same model feeds the CLI (``--set key=value``), DVC experiments (``dvc exp run -S
flow.key=value`` edits ``params.yaml``), and the Prefect dashboard form (Prefect renders the
flow's pydantic parameter as a form, using the attribute docstrings as descriptions).

Everything a user hands in (a params file, ``--set`` strings, the form's JSON) is hostile until
validated: a missing or unreadable params file, broken YAML, a top level that is not a mapping,
a key path through a value, a non-finite float or a validator that trips over a value all end in
a :class:`ConfigError` whose every line reads ``<where>: <message>`` — never a traceback and
never a run of the defaults in place of what the user asked for.
"""
from __future__ import annotations

import math
import re
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import to_jsonable_python

from .artifacts import PROJECT_ROOT

C = TypeVar("C", bound="FlowConfig")

#: a params file is a few kB; anything far larger is not one (and a FIFO or device never ends)
MAX_PARAMS_BYTES = 8 << 20
#: YAML anchors let a 1 kB file expand to billions of nodes for the validator to walk
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64
#: validation errors listed before the rest are summed up in one line
MAX_ERROR_LINES = 12


class ConfigError(ValueError):
    """A config value is invalid; the message names the field and what is allowed.

    Every line of the message reads ``<where>: <message>`` (``stun.sparsities: ...``,
    ``params.yaml:3:7: ...``, ``--set zoo.steps: ...``); the CLI prints it and exits 2.
    A ``ValueError``, so the flow scaffold never retries it."""


class DataError(ValueError):
    """An input or stored artifact is missing, damaged or inconsistent (a truncated shard, a
    manifest that disagrees with its tar, a run record without its fields); the message starts
    with the file or folder it is about. Deterministic, so never retried; the CLI exits 2."""


class ConfigSection(BaseModel):
    """Base of every config model, top-level or nested (``zoo``, ``npu``, ``pose``...): unknown
    keys are errors, attribute docstrings become descriptions, defaults are validated too, and
    every float is finite (``.inf``/``.nan`` would pass ``ge=0`` and fail deep inside a run)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_default=True,
                              allow_inf_nan=False)


class Resources(BaseModel):
    """Where a flow's steps run: the same section in every flow's config (``<flow>.resources``)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, allow_inf_nan=False)

    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")
    """auto: GPUs when the cluster has them, else CPU; cpu: never a GPU; cuda / cuda:N: require one."""
    cpus_per_step: int = Field(0, ge=0, le=4096)
    """CPUs (torch threads) a heavy step takes; 0 = all of the cluster's CPUs."""
    workers: int = Field(0, ge=0, le=1024)
    """Actors in the flow's worker pool (Blender, profilers, NPU simulators); 0 = one per GPU, else per CPU slice."""
    threads_per_worker: int = Field(1, ge=1, le=256)
    """Threads each pool actor uses (Cycles threads, torch threads)."""

    def check_device(self, cluster_gpus: int) -> None:
        """Refuse a device the cluster does not have (checked at flow start, not at import)."""
        if self.device.startswith("cuda"):
            index = int(self.device.split(":")[1]) if ":" in self.device else 0
            if index >= cluster_gpus:
                have = f"{cluster_gpus} GPU(s)" if cluster_gpus else "no GPU"
                raise ConfigError(f"resources.device: {self.device!r} requested but the cluster has {have}")


class FlowConfig(ConfigSection):
    """Base of every flow's top-level config (nested sections derive from :class:`ConfigSection`,
    so they do not each grow a ``resources`` section of their own)."""

    resources: Resources = Field(default_factory=Resources)
    """Where the steps run: device, CPUs per step, worker-pool size and threads."""


def default_params_path() -> Path:
    return PROJECT_ROOT / "params.yaml"


# ----------------------------------------------------------------------------- reading user input


def _printable(s: str, limit: int = 80) -> str:
    """``s`` fit for one line of a message: quoted when it holds control characters, cut when long."""
    shown = s if s.isprintable() else repr(s)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


def _one_line(e: BaseException, limit: int = 300) -> str:
    return _printable(" ".join(str(e).split()), limit)


def _yaml_error(e: Exception, with_mark: bool) -> tuple[str, str]:
    """(``:line:col`` or "", one-line problem) of a PyYAML error (or of a constructor that raised)."""
    if not isinstance(e, yaml.YAMLError):
        # `!!int abc`, `!!timestamp 2020-13-40`: PyYAML's constructors raise plain errors
        return "", f"{type(e).__name__}: {_one_line(e)}"
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    loc = f":{mark.line + 1}:{mark.column + 1}" if (with_mark and mark is not None) else ""
    problem = getattr(e, "problem", None)
    if problem is None:  # ReaderError (a control character), plain YAMLError
        return loc, _one_line(e)
    context = getattr(e, "context", None)
    return loc, _printable(" ".join(f"{context + ', ' if context else ''}{problem}".split()), 300)


def _check_shape(doc: Any, where: str) -> None:
    """Refuse YAML that would make validation itself the runaway work: alias bombs (a few
    anchors expanding to billions of nodes), self-referencing anchors, absurd nesting."""
    count, stack = 0, [(doc, 0)]
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_YAML_NODES:
            raise ConfigError(f"{where}: more than {MAX_YAML_NODES} YAML nodes once anchors are expanded; "
                              "a params file holds a few hundred")
        if depth > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: YAML nested deeper than {MAX_YAML_DEPTH} levels (or an anchor that contains itself)")
        if isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, (list, tuple, set, frozenset)):
            stack.extend((v, depth + 1) for v in node)


def _load_yaml(text: str, where: str, *, with_mark: bool = True, what: str = "invalid YAML") -> Any:
    try:
        doc = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{where}: {what}: nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - a parser fed user text: any failure means "not valid YAML"
        loc, problem = _yaml_error(e, with_mark)
        raise ConfigError(f"{where}{loc}: {what}: {problem}") from None
    _check_shape(doc, where)
    return doc


def read_params(params_path: Path | str | None = None) -> dict[Any, Any]:
    """The whole params file: a mapping of flow sections.

    ``None`` means the project's own ``params.yaml`` (when it is absent, as in an installed
    package, every flow runs on its model's defaults). A path the user names must exist and be
    a readable UTF-8 YAML mapping; anything else is a :class:`ConfigError` naming the path."""
    explicit = params_path is not None
    path = Path(params_path) if explicit else default_params_path()
    where = _printable(str(path), 200)
    try:
        if not path.exists():
            if not explicit:
                return {}
            raise ConfigError(f"{where}: no such params file")
        if path.is_dir():
            raise ConfigError(f"{where}: is a directory, not a params file")
        if not path.is_file():  # a FIFO or /dev/zero would be read forever
            raise ConfigError(f"{where}: not a regular file")
        if path.stat().st_size > MAX_PARAMS_BYTES:
            raise ConfigError(f"{where}: {path.stat().st_size} bytes is not a params file (limit {MAX_PARAMS_BYTES})")
        raw = path.read_bytes()
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{where}: cannot read: {getattr(e, 'strerror', None) or _one_line(e)}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    doc = _load_yaml(text, where)
    if doc is None:  # an empty file (or only comments)
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: the top level must be a mapping of flow sections ('stun:', 's3nas:', ...), "
                          f"got a {type(doc).__name__}")
    return doc


def read_section(flow: str, params_path: Path | str | None = None, *, required: bool | None = None) -> dict[str, Any]:
    """``flow``'s section of the params file.

    A section missing from the project's own ``params.yaml`` means "the defaults"; one missing
    from a file the user named (``required``, the default when ``params_path`` is given) is an
    error: running the defaults there would silently ignore what the user meant to run."""
    doc = read_params(params_path)
    where = _printable(str(params_path if params_path is not None else default_params_path()), 200)
    if required is None:
        required = params_path is not None
    if flow not in doc:
        if required:
            have = ", ".join(_printable(str(k), 40) for k in list(doc)[:8]) or "none"
            raise ConfigError(f"{where}: no '{flow}' section (a params file holds one section per flow, "
                              f"'{flow}:' then its keys; sections here: {have})")
        return {}
    section = doc[flow]
    if section is None:  # `stun:` with nothing under it
        return {}
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: section '{flow}' must be a mapping, got {type(section).__name__}")
    return section


def parse_overrides(pairs: Iterable[str]) -> dict[str, Any]:
    """``["a=1", "b.c=[0.4, 0.5]"]`` → nested dict; values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set {_printable(pair)}: expected key=value")
        key, raw = pair.split("=", 1)
        shown = _printable(key.strip()) or "''"
        parts = [p.strip() for p in key.strip().split(".")]
        if not all(parts):
            raise ConfigError(f"--set {shown}: a key path needs a name between every pair of dots (e.g. zoo.steps=5)")
        value = (_load_yaml(raw, f"--set {shown}", with_mark=False, what=f"invalid YAML value {_printable(repr(raw), 40)}")
                 if raw.strip() else "")
        if isinstance(value, int) and not isinstance(value, bool) and ":" in raw:
            value = raw.strip()  # YAML 1.1 reads '2:4' as base-60 124
        node = out
        for depth, p in enumerate(parts[:-1]):
            child = node.setdefault(p, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {shown}: '{'.'.join(parts[:depth + 1])}' is already set to a value "
                                  f"({_printable(repr(child), 40)}), so it has no key '{_printable(parts[depth + 1], 40)}'")
            node = child
        node[parts[-1]] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for k, v in extra.items():
        merged[k] = _merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), dict) else v
    return merged


# ----------------------------------------------------------------------------- validation


def _non_finite(obj: Any, path: tuple = (), depth: int = 0) -> list[tuple[tuple, float]]:
    """(path, value) of every NaN/±inf float in plain data or a validated model."""
    if isinstance(obj, float):
        return [] if math.isfinite(obj) else [(path, obj)]
    if depth > MAX_YAML_DEPTH + 8:
        return []
    if isinstance(obj, BaseModel):
        items: Iterable = ((k, getattr(obj, k)) for k in type(obj).model_fields)
    elif isinstance(obj, dict):
        items = obj.items()
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = enumerate(obj)
    else:
        return []
    return [hit for k, v in items for hit in _non_finite(v, path + (k,), depth + 1)]


def _finite_or_raise(obj: Any, prefix: str) -> None:
    bad = _non_finite(obj)
    if bad:
        raise ConfigError(_join_lines(
            [f"{_loc((prefix, *p))}: Input should be a finite number (got {v!r})" for p, v in bad], prefix))


def validate(cls: type[C], values: dict[str, Any], *, flow: str = "") -> C:
    """Build ``cls`` from ``values``; raise :class:`ConfigError` naming every bad field."""
    prefix = flow or cls.__name__
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix}: the config must be a mapping of its fields, got {type(values).__name__}")
    # Before any validator sees them: a model validator fed .inf may compute forever or overflow.
    _finite_or_raise(values, prefix)
    try:
        cfg = cls.model_validate(values)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, prefix)) from None
    except RecursionError:
        raise ConfigError(f"{prefix}: the values nest too deeply to be a config") from None
    except Exception as e:  # noqa: BLE001
        # A validator tripped over a value instead of refusing it (pydantic turns only
        # ValueError/AssertionError into field errors): still a value this config cannot take,
        # so say so on one line; the chained cause (shown under -v) points at the validator.
        raise ConfigError(f"{prefix}: a validator failed on these values: {type(e).__name__}: {_one_line(e)}") from e
    # Nested models that do not derive from ConfigSection do not refuse "inf" strings themselves.
    _finite_or_raise(cfg, prefix)
    return cfg


def _loc(parts: Iterable[Any]) -> str:
    """``('zoo', 'steps')`` → ``zoo.steps``; a key that is not a plain name is shown quoted."""
    out = ""
    for part in parts:
        s = str(part)
        if re.fullmatch(r"[\w\-]+", s):
            out += f".{s}" if out else s
        else:
            out += f"[{_printable(repr(part), 40)}]"
    return out


def _join_lines(lines: list[str], prefix: str) -> str:
    if len(lines) > MAX_ERROR_LINES:
        rest = len(lines) - (MAX_ERROR_LINES - 1)
        lines = lines[: MAX_ERROR_LINES - 1] + [f"{prefix}: … and {rest} more problems"]
    return "\n".join(lines)


def format_validation_error(e: ValidationError, prefix: str) -> str:
    """One ``<flow>.<field>: <message> (got <value>)`` line per problem."""
    lines = []
    for err in e.errors():
        loc = _loc(err["loc"])
        msg = " ".join(err["msg"].removeprefix("Value error, ").split())
        got_s = "" if err["type"] == "missing" else f" (got {_printable(repr(err.get('input')), 80)})"
        m = re.match(r"^(\w+)[:=]", msg) if err["type"] == "value_error" else None
        if not loc or (m and isinstance(err.get("input"), dict) and m.group(1) in err["input"]):
            # A cross-field check (of the config or of a nested section): its message starts
            # with the field it is about ("nm: ...").
            field = m.group(1) if m else "<config>"
            loc = f"{loc}.{field}" if loc else field
            got_s = ""
            msg = msg.split(": ", 1)[1] if m and msg.startswith(f"{field}: ") else msg
        lines.append(f"{prefix}{'' if loc.startswith('[') else '.'}{loc}: {_printable(msg, 400)}{got_s}")
    return _join_lines(lines, prefix)


def load_config(
    flow: str,
    cls: type[C],
    *,
    params_path: Path | str | None = None,
    overrides: Iterable[str] = (),
) -> C:
    """Defaults of ``cls`` ← ``params.yaml[flow]`` ← ``--set`` overrides, validated once."""
    values = _merge(read_section(flow, params_path), parse_overrides(overrides))
    return validate(cls, values, flow=flow)


class _ParamsDumper(yaml.SafeDumper):
    """params.yaml's own layout: sections as block mappings, lists of scalars on one line."""


_ParamsDumper.add_representer(dict, lambda d, data: d.represent_mapping(
    "tag:yaml.org,2002:map", data.items(), flow_style=False))
_ParamsDumper.add_representer(list, lambda d, data: d.represent_sequence(
    "tag:yaml.org,2002:seq", data, flow_style=not any(isinstance(x, (list, dict)) for x in data)
    and len(format_value(data)) <= 56))  # longer lists one item a line: every line fits 80 columns


def resolved_yaml(flow: str, cfg: BaseModel) -> str:
    """The validated config as a params file (``{flow: {...}}``): what ``--cfg job`` prints, and
    what ``--params`` reads back to the same config."""
    return yaml.dump({flow: cfg.model_dump(mode="json")}, Dumper=_ParamsDumper, sort_keys=False,
                     allow_unicode=True, width=76)


# ----------------------------------------------------------------------------- describing


def format_value(value: Any) -> str:
    """A value as one types it after ``--set key=`` (YAML flow style: ``[0.4, 0.5]``, ``null``)."""
    text = yaml.safe_dump(to_jsonable_python(value), default_flow_style=True, width=math.inf, allow_unicode=True)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _num(x: Any) -> str:
    return format_value(x)


def _constraints(metadata: Iterable[Any]) -> str:
    """``float in [0.0, 1.0)``-style bounds, lengths and patterns of a field's metadata."""
    lo = hi = ""
    min_n = max_n = None
    extra = []
    for m in metadata:
        for attr, side in (("ge", "["), ("gt", "(")):
            if getattr(m, attr, None) is not None:
                lo = f"{side}{_num(getattr(m, attr))}"
        for attr, side in (("le", "]"), ("lt", ")")):
            if getattr(m, attr, None) is not None:
                hi = f"{_num(getattr(m, attr))}{side}"
        if getattr(m, "min_length", None) is not None:
            min_n = m.min_length
        if getattr(m, "max_length", None) is not None:
            max_n = m.max_length
        if getattr(m, "multiple_of", None) is not None:
            extra.append(f"multiple of {_num(m.multiple_of)}")
        if getattr(m, "pattern", None) is not None:
            extra.append(f"matching {m.pattern}")
    items = lambda n: f"{n} item" + ("" if n == 1 else "s")  # noqa: E731
    if min_n is not None and max_n is not None:
        extra.insert(0, f"{items(min_n)}" if min_n == max_n else f"{min_n} to {items(max_n)}")
    elif min_n is not None:
        extra.insert(0, f"at least {items(min_n)}")
    elif max_n is not None:
        extra.insert(0, f"at most {items(max_n)}")
    parts = []
    if lo and hi:
        parts.append(f"in {lo}, {hi}")
    elif lo:
        parts.append(f"{'>=' if lo[0] == '[' else '>'} {lo[1:]}")
    elif hi:
        parts.append(f"{'<=' if hi[-1] == ']' else '<'} {hi[:-1]}")
    return ", ".join(parts + extra)


def type_text(ann: Any) -> str:
    """A field type in the words of a config file: ``uniform | global``, ``list of float``."""
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if ann is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(format_value(a) for a in args)
    if origin is typing.Annotated:
        inner, bounds = type_text(args[0]), _constraints(args[1:])
        return f"{inner} {bounds}" if bounds else inner
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_text(a) for a in args)
    if origin in (list, set, frozenset) or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        inner = type_text(args[0]) if args else "any"
        return f"list of ({inner})" if " " in inner and not inner.startswith("[") else f"list of {inner}"
    if origin is tuple:
        return "[" + ", ".join(type_text(a) for a in args) + "]"
    if origin is dict:
        return f"mapping of {type_text(args[0])} to {type_text(args[1])}" if args else "mapping"
    if isinstance(ann, type):
        if issubclass(ann, BaseModel):
            return "section"
        return {"str": "str", "Path": "path", "PosixPath": "path"}.get(ann.__name__, ann.__name__)
    return str(ann).replace("typing.", "")


def _section_class(ann: Any) -> type[BaseModel] | None:
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return ann
    subs = [a for a in typing.get_args(ann) if isinstance(a, type) and issubclass(a, BaseModel)]
    return subs[0] if len(subs) == 1 and typing.get_origin(ann) in (typing.Union, types.UnionType) else None


_NO_DEFAULT = object()


def describe(cls: type[BaseModel], values: BaseModel | None = None) -> list[dict[str, Any]]:
    """Rows for ``paperline show``: every setting of ``cls``, nested sections expanded to dotted
    keys (``zoo.steps``, ``resources.device``), each with ``type`` (choices and bounds spelled
    out), ``default`` (the model's own), ``value`` (``values``', e.g. params.yaml + ``--set``;
    the default when not given) and ``description``. A nested section also gets a row of
    ``kind`` "section" (its description) before its fields. Values are JSON-able."""
    rows: list[dict[str, Any]] = []
    _describe(cls, values, None, "", rows)
    if issubclass(cls, FlowConfig):
        # The flow's own settings first; the sections every flow shares (resources) after them.
        shared = tuple(f"{name}" for name in FlowConfig.model_fields)
        rows.sort(key=lambda r: r["key"].split(".")[0] in shared)
    return rows


def _describe(cls: type[BaseModel], values: BaseModel | None, defaults: BaseModel | None, prefix: str,
              rows: list[dict[str, Any]]) -> None:
    for name, f in cls.model_fields.items():
        key = prefix + name
        if defaults is not None:
            default = getattr(defaults, name)
        else:
            default = _NO_DEFAULT if f.is_required() else f.get_default(call_default_factory=True)
        value = getattr(values, name) if values is not None else default
        description = " ".join((f.description or "").split())
        sub = _section_class(f.annotation)
        if sub is not None and isinstance(value, BaseModel | None) and isinstance(default, BaseModel | None):
            rows.append({"kind": "section", "key": key, "type": "section", "default": None, "value": None,
                         "description": description})
            _describe(type(value) if isinstance(value, BaseModel) else sub,
                      value if isinstance(value, BaseModel) else None,
                      default if isinstance(default, BaseModel) else None, key + ".", rows)
            continue
        tname = type_text(f.annotation)
        bounds = _constraints(f.metadata)
        rows.append({
            "kind": "field",
            "key": key,
            "type": f"{tname}, {bounds}" if bounds else tname,
            "default": "(required)" if default is _NO_DEFAULT else to_jsonable_python(default),
            "value": "(required)" if value is _NO_DEFAULT else to_jsonable_python(value),
            "description": description,
        })
