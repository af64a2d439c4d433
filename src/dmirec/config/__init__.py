"""Typed run configuration: a schema of sections, YAML files and ``--key=value`` on top.

:mod:`dmirec.config.schema` declares every key once, in a section (training, evaluation, the neighbour
rule... read by every model; capsule routing, REMI's scheme, COIN, SASRec, DMI... read by the models
named), with its type, default, range and doc, and the values each model name implies. The flat
frozen :class:`Config` generated from it is what the code reads (``cfg.lr``), what a YAML file, a
command line override and a saved run directory all speak. Unknown keys, values of the wrong type
and keys the chosen model does not read are errors that name the key. Defaults are the reference
training defaults of docs/design.md (D=64, K=4, batch 128, Adam 1e-3, 1,280 shared uniform
negatives, validation every 500 steps, patience 10).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from . import schema
from .schema import MODEL_DEFAULTS, model_defaults  # noqa: F401 (re-exported)


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


def _config_class() -> type:
    """The flat frozen dataclass of every key of :data:`schema.SECTIONS`, in schema order."""
    spec = [(name, info.annotation, dataclasses.field(default=info.default))
            for name, (_, info) in schema.fields().items()]

    def to_dict(self) -> dict[str, Any]:
        # tuples become lists so the dict is plain YAML/JSON
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> "Config":
        return from_dict({**self.to_dict(), **changes})

    doc = ("The run configuration: every key of every section of :mod:`dmirec.config.schema`, flat "
           "(``cfg.lr``), frozen. Build it with :func:`build_config` (defaults, model defaults, files, "
           "overrides) or :func:`from_dict` (a saved, resolved config).")
    cls = dataclasses.make_dataclass("Config", spec, frozen=True,
                                     namespace={"to_dict": to_dict, "replace": replace, "__doc__": doc})
    cls.__module__ = __name__  # pickles and prints as dmirec.config.Config
    return cls


Config = _config_class()

_FIELDS = {f.name: f for f in fields(Config)}
_HINTS = typing.get_type_hints(Config)


def _coerce(key: str, value: Any) -> Any:
    """Check (and, for strings from the command line, parse) one value against its field type."""
    want = _HINTS[key]
    if typing.get_origin(want) is tuple:
        return _int_tuple(key, value)
    if typing.get_origin(want) is not None:
        raise ConfigError(f"config key {key!r}: unsupported field type {want}")
    if isinstance(value, str) and want is not str:
        text = value.strip()
        if want is bool:
            low = text.lower()
            if low in ("true", "1", "yes", "on"):
                return True
            if low in ("false", "0", "no", "off"):
                return False
            raise ConfigError(f"config key {key!r}: expected a boolean, got {value!r}")
        number = _parse_number(text) if want in (int, float) else None
        if number is not None:
            value = number
        else:
            try:
                value = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise ConfigError(f"config key {key!r}: cannot parse {value!r}") from exc
    if want is int and isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)  # 1e5 for a step count
    if want is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r}: expected a boolean, got {value!r}")
        return value
    if want is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected an integer, got {value!r}")
        return value
    if want is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected a number, got {value!r}")
        return float(value)
    if want is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"config key {key!r}: unsupported field type {want}")


def _parse_number(text: str) -> int | float | None:
    """``1e-3``, ``5e4``, ``100_000``, ``.5`` as Python reads them (YAML 1.1 takes ``1e-3`` for a
    string); None when the text is not a finite number."""
    for parse in (int, float):
        try:
            value = parse(text)
        except ValueError:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            return None
        return value
    return None


def _int_tuple(key: str, value: Any) -> tuple[int, ...]:
    """A tuple of positive integers from a list/tuple or a comma string such as ``"10,20,50"``."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.strip().strip("[]()").split(",") if p.strip()]
        try:
            value = [int(p) for p in parts]
        except ValueError:
            raise ConfigError(f"config key {key!r}: expected comma-separated integers, got {value!r}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, (list, tuple)) or not value:
        raise ConfigError(f"config key {key!r}: expected a non-empty list of integers, got {value!r}")
    if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ConfigError(f"config key {key!r}: every entry must be a positive integer, got {value!r}")
    return tuple(sorted(set(value)))


# The one registry of allowed values (declared in the schema); modules take their choices from here.
CHOICES: dict[str, tuple[str, ...]] = {
    name: tuple(info.json_schema_extra["choices"]) for name, (_, info) in schema.fields().items()
    if isinstance(info.json_schema_extra, dict) and "choices" in info.json_schema_extra}
DMI_KEY_SOURCES = ("items", "neighbours", "others")


def dmi_key_list(text: str) -> tuple[str, ...]:
    """The sources DMI's denoiser attends to, from ``dmi_keys``: ``"items,neighbours"`` ->
    ``("items", "neighbours")``; empty, unknown or repeated names are a :class:`ConfigError`."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys or len(set(keys)) != len(keys) or any(k not in DMI_KEY_SOURCES for k in keys):
        raise ConfigError(f"config key 'dmi_keys' must be a comma list of distinct names from {DMI_KEY_SOURCES}, "
                          f"got {text!r}")
    return keys

# Keys that were renamed: a clear error instead of "unknown key".
RENAMED = {"eta": "fusion_weight", "stochastic_reverse": "sampler (posterior_mean | ancestral)",
           "denoiser_residual": "prediction (x0_residual | x0)"}


def upgrade_saved(values: dict[str, Any]) -> dict[str, Any]:
    """A resolved config saved by an earlier version (run directory, bundle) in today's keys."""
    if not isinstance(values, dict):
        return values  # from_dict names the problem
    values = dict(values)
    if "eta" in values:
        values.setdefault("fusion_weight", values.pop("eta"))
    if "stochastic_reverse" in values:
        values.setdefault("sampler", "ancestral" if values.pop("stochastic_reverse") else "posterior_mean")
    if "denoiser_residual" in values:
        values.setdefault("prediction", "x0_residual" if values.pop("denoiser_residual") else "x0")
    return values


def did_you_mean(key: str) -> str:
    """`` (did you mean 'max_steps'?)`` for a misspelt config key, or nothing."""
    import difflib

    close = difflib.get_close_matches(key, list(_FIELDS), n=3, cutoff=0.6)
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""


def _kind(hint: Any) -> str:
    """A field type as help prints it: ``int``, ``str``, ``tuple[int, ...]``."""
    return getattr(hint, "__name__", str(hint)) if typing.get_origin(hint) is None else str(hint)


def _readers_text(spec: schema.SectionSpec) -> str:
    """``remi, coin (and dmi on them)``: the models that read a section, as help and docs print it."""
    if schema.EVERY_MODEL in spec.readers:
        return "every model"
    wrappers = schema.wrappers_of(spec.readers)
    return ", ".join(spec.readers) + (f" (and {', '.join(wrappers)} on them)" if wrappers else "")


def _key_line(name: str, info: Any) -> str:
    """One key of help: name, type, default, doc, and the models whose own default differs."""
    by_value: dict[str, list[str]] = {}
    for model, values in MODEL_DEFAULTS.items():
        if name in values:
            by_value.setdefault(repr(values[name]), []).append(model)
    notes = "".join(f" [{', '.join(models)}: {value}]" for value, models in by_value.items())
    return f"  {name} ({_kind(_HINTS[name])}, default {info.default!r}): {info.description}{notes}"


def config_keys_help() -> str:
    """Every config key, section by section (with the models that read it), with its type, default
    and doc line from :mod:`dmirec.config.schema`: the ``--help`` of the commands that take
    ``--key=value`` overrides."""
    lines = ["config keys (--key=value, or key: value in a --config YAML file), by section and the models that "
             "read it; a key set for a model that does not read it is an error. [MODEL: value] = that model's "
             "default:"]
    for spec in schema.SECTIONS:
        lines.append(f"{spec.name} [read by {_readers_text(spec)}]")
        lines.extend(_key_line(name, info) for name, info in spec.model.model_fields.items())
    return "\n".join(lines)


def from_dict(values: dict[str, Any], source: str = "config") -> Config:
    """Build a Config from a mapping; unknown keys and wrong types raise :class:`ConfigError`."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: expected a mapping of key: value, got {type(values).__name__}")
    clean = {}
    for key, value in values.items():
        key = str(key).replace("-", "_")
        if key in RENAMED:
            raise ConfigError(f"{source}: config key {key!r} was renamed: use {RENAMED[key]}")
        if key not in _FIELDS:
            raise ConfigError(f"{source}: unknown config key {key!r}{did_you_mean(key)}")
        clean[key] = _coerce(key, value)
    for key, allowed in CHOICES.items():
        if key in clean and clean[key] not in allowed:
            raise ConfigError(f"{source}: config key {key!r} must be one of {allowed}, got {clean[key]!r}")
    cfg = Config(**clean)
    _check_ranges(cfg, source)
    return cfg


SHARDED_MODELS = ("comirec-sa", "remi", "comirec-dr", "mind")  # read the item table only through item_emb(ids)


def _bounds_text(info: Any) -> tuple[str, Any]:
    """The range a schema field declares, as (message, predicate on a value); ("", None) if none."""
    low = high = None
    for m in info.metadata:
        for name in ("gt", "ge", "lt", "le"):
            if getattr(m, name, None) is not None:
                if name in ("gt", "ge"):
                    low = (name, getattr(m, name))
                else:
                    high = (name, getattr(m, name))
    if low is None and high is None:
        return "", None
    if high is None:
        text = "positive" if low == ("gt", 0) else f"{'>' if low[0] == 'gt' else '>='} {low[1]}"
    elif low is None:
        text = f"{'<' if high[0] == 'lt' else '<='} {high[1]}"
    else:
        text = f"in {'(' if low[0] == 'gt' else '['}{low[1]}, {high[1]}{')' if high[0] == 'lt' else ']'}"

    def ok(v: Any) -> bool:
        return ((low is None or (v > low[1] if low[0] == "gt" else v >= low[1]))
                and (high is None or (v < high[1] if high[0] == "lt" else v <= high[1])))

    return text, ok


_BOUNDS = {name: _bounds_text(info) for name, (_, info) in schema.fields().items()}


def _check_ranges(cfg: Config, source: str) -> None:
    for key, (text, ok) in _BOUNDS.items():
        if ok is not None and not ok(getattr(cfg, key)):
            raise ConfigError(f"{source}: config key {key!r} must be {text}, got {getattr(cfg, key)}")
    if cfg.embedding_dim % cfg.sasrec_heads:
        raise ConfigError(f"{source}: config key 'sasrec_heads' ({cfg.sasrec_heads}) must divide embedding_dim "
                          f"({cfg.embedding_dim})")
    try:
        dmi_key_list(cfg.dmi_keys)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    if cfg.valid_users and cfg.eval_max_users:
        raise ConfigError(f"{source}: config keys 'valid_users' (a seeded sample) and 'eval_max_users' (the first "
                          f"users) both choose validation users; set only one")
    if cfg.sharded_embeddings and cfg.model not in SHARDED_MODELS:
        raise ConfigError(f"{source}: config key 'sharded_embeddings' supports models {', '.join(SHARDED_MODELS)}, "
                          f"not {cfg.model}")
    if cfg.sharded_embeddings and cfg.table_init == "reference":
        raise ConfigError(f"{source}: config key 'table_init': a sharded table draws its rows block by block "
                          f"(blocked or auto), not over the whole table (reference)")
    if cfg.sharded_embeddings and (cfg.neighbour_alpha > 0 or cfg.repeat_channel):
        raise ConfigError(f"{source}: config key 'sharded_embeddings' cannot be combined with "
                          f"{'neighbour_alpha > 0' if cfg.neighbour_alpha > 0 else 'repeat_channel'} (an interest bank "
                          f"or history scores read the whole table); apply it at evaluation of the finished run")
    if cfg.embedding_optimizer == "rowwise_adagrad" and not cfg.sharded_embeddings:
        raise ConfigError(f"{source}: config key 'embedding_optimizer': rowwise_adagrad is TorchRec's fused update "
                          f"of a sharded table; it needs sharded_embeddings=true (one process: dense or sparse)")
    if cfg.embedding_optimizer == "rowwise_adagrad" and cfg.weight_decay:
        raise ConfigError(f"{source}: config key 'weight_decay' must be 0 with embedding_optimizer=rowwise_adagrad")
    if cfg.embedding_optimizer == "sparse" and cfg.weight_decay:
        raise ConfigError(f"{source}: config key 'weight_decay' must be 0 with embedding_optimizer=sparse "
                          f"(decay would touch every row of the item table)")
    if cfg.start_step > cfg.diffusion_steps:
        raise ConfigError(f"{source}: config key 'start_step' ({cfg.start_step}) must be <= diffusion_steps "
                          f"({cfg.diffusion_steps})")
    if cfg.reverse_steps > (cfg.start_step or cfg.diffusion_steps):
        raise ConfigError(f"{source}: config key 'reverse_steps' must be <= start_step (or diffusion_steps)")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read one YAML config file into a mapping, as written (``include:`` not yet resolved)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of key: value at top level")
    return data


INCLUDE_KEY = "include"


def resolve_yaml(path: str | Path) -> dict[str, Any]:
    """A config file with its ``include:`` files merged in (:func:`resolve_yaml_origins`)."""
    return resolve_yaml_origins(path)[0]


def resolve_yaml_origins(path: str | Path, _chain: tuple[Path, ...] = ()) -> tuple[dict[str, Any], dict[str, str]]:
    """A config file with its ``include:`` files merged in: the layered configs of configs/.

    ``include:`` names one file or a list of files, relative to the including file. They are
    resolved the same way (includes nest), merged in the order listed, and the including file's
    own keys come last, so later keys win. A missing file, a cycle, or an invalid key names the
    file it is in; each file is validated as a whole config on its own. Returns the merged keys
    and, for each, the file that set it.
    """
    path = Path(path)
    try:
        real = path.resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        where = f" (included from {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file not found: {path}{where}") from None
    if real in _chain:
        loop = " -> ".join(str(p) for p in (*_chain[_chain.index(real):], real))
        raise ConfigError(f"{path}: include cycle: {loop}")
    data = {str(k).replace("-", "_"): v for k, v in load_yaml(path).items()}
    includes = data.pop(INCLUDE_KEY, [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) and i.strip() for i in includes):
        raise ConfigError(f"{path}: {INCLUDE_KEY!r} must be a file name or a list of file names, got {includes!r}")
    merged: dict[str, Any] = {}
    origins: dict[str, str] = {}
    for name in includes:
        inner, inner_origins = resolve_yaml_origins(real.parent / name, (*_chain, real))
        merged.update(inner)
        origins.update(inner_origins)
    merged.update(data)
    origins.update(dict.fromkeys(data, str(path)))
    from_dict(merged, source=str(path))  # validate each file on its own, naming it in errors
    return merged, origins


def parse_overrides(items: list[str]) -> dict[str, str]:
    """Turn ``["--lr=0.01", "batch_size=64"]`` into ``{"lr": "0.01", "batch_size": "64"}``.

    ``--max-steps=5`` and ``--max_steps=5`` are the same key. Unknown keys, a key given twice,
    and a key without ``=value`` are errors (nothing is ignored or silently overridden).
    """
    out: dict[str, str] = {}
    for item in items:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            hint = f" (write --{text}=VALUE)" if text.replace("-", "_") in _FIELDS else ""
            raise ConfigError(f"override {item!r}: expected --key=value{hint}")
        key, value = text.split("=", 1)
        key = key.replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(f"command line: unknown config key {key!r}{did_you_mean(key)}")
        if key in out:
            raise ConfigError(f"command line: config key {key!r} is given twice ({out[key]!r} and {value!r})")
        out[key] = value
    return out


def check_keys_read(cfg: Config, keys: dict[str, str], reference: Config) -> None:
    """Refuse a key of ``keys`` (``{key: where it was set}``) that the model of ``cfg`` does not read,
    unless ``cfg`` holds the value ``reference`` holds for it (a resolved config of a run, which
    holds every key at its value, is a valid config file)."""
    model, backbone = cfg.model, cfg.backbone if cfg.model in schema.WRAPPERS else None
    for key in schema.keys_not_read(model, backbone, list(keys)):
        if getattr(cfg, key) == getattr(reference, key):
            continue
        on = f" on backbone {backbone!r}" if backbone else ""
        raise ConfigError(f"{keys[key]}: config key {key!r} is not read by model {model!r}{on} "
                          f"(it belongs to: {', '.join(schema.readers_of(key))})")


def build_config(yaml_paths: list[str | Path] = (), overrides: dict[str, Any] | None = None,
                 model: str | None = None) -> Config:
    """Defaults < the model's defaults < each YAML file in order < ``overrides``.

    A YAML file's ``include:`` files come before its own keys (:func:`resolve_yaml`). A key that is
    set (in a file or an override) but not read by the chosen model is an error naming the model,
    the key and where it was set (:func:`check_keys_read`).

    The model (and a wrapper's backbone) may be named by ``model``, in ``overrides`` or in a YAML
    file; the last of these to name it decides whose defaults apply.
    """
    overrides = {str(k).replace("-", "_"): v for k, v in (overrides or {}).items()}
    if model:
        overrides["model"] = model
    files, where = [], {}
    for path in yaml_paths:
        data, origins = resolve_yaml_origins(path)  # validated file by file, errors name the file
        files.append(data)
        where.update(origins)
    if overrides:
        from_dict(dict(overrides), source="command line")
        where.update(dict.fromkeys(overrides, "command line"))
    chosen, backbone = Config.model, None
    for layer in files + [overrides]:
        chosen = layer.get("model", chosen)
        backbone = layer.get("backbone", backbone)
    defaults = model_defaults(str(chosen), backbone)
    merged = dict(defaults)
    for layer in files + [overrides]:
        merged.update(layer)
    cfg = from_dict(merged)
    check_keys_read(cfg, where, from_dict(defaults))
    return cfg


def make_config(model: str | None = None, yaml_paths: list[str | Path] = (), overrides: dict | None = None) -> Config:
    """:func:`build_config` with the model first (the order the command line reads)."""
    return build_config(yaml_paths, overrides, model=model)
