"""The merge configuration: the subset of mergekit's YAML that mashup reads, plus LoRA options.

A mergekit config that only uses these keys means the same thing in both tools::

    merge_method: ties
    base_model: path/or/zoo-name
    models:
      - model: a
        parameters: {weight: 0.5, density: 0.7}
    parameters: {normalize: true, lambda: 1.0, int8_mask: true}
    dtype: bfloat16
    out_dtype: bfloat16
    random_seed: 0          # mergekit takes this as --random-seed
    lora_mode: ab_mean      # mashup only: ab_mean | delta | cat
    rank: 8                 # mashup only: delta mode writes a rank-r adapter

Parameters are scalars. mergekit's gradients (lists) and per-tensor filters are refused, as are
keys and parameters mashup does not know, each with the valid choices in the message.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from mashup.errors import MashupError

DTYPES = ("float32", "bfloat16", "float16", "float64")
LORA_MODES = ("ab_mean", "delta", "cat")
Scalar = bool | int | float | str


def dtype_name(name: str | None) -> str | None:
    """Canonical dtype name (mergekit also accepts a ``torch.`` prefix)."""
    if name is None:
        return None
    return name.removeprefix("torch.")


class ModelSpec(BaseModel):
    """One entry of ``models``."""

    model_config = ConfigDict(extra="forbid")

    model: str
    parameters: dict[str, Scalar] = {}

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            _refuse_unknown(data, ("model", "parameters"), "models[] entry")
            if data.get("parameters") is None and "parameters" in data:
                data = {**data, "parameters": {}}
        return data


class MergeConfig(BaseModel):
    """A validated merge config. Build it with :meth:`from_yaml` or ``model_validate``."""

    model_config = ConfigDict(extra="forbid")

    merge_method: str
    base_model: str | None = None
    models: list[ModelSpec]
    parameters: dict[str, Scalar] = {}
    dtype: str | None = None
    out_dtype: str | None = None
    random_seed: int | None = None
    lora_mode: Literal["ab_mean", "delta", "cat"] | None = None
    rank: int | None = None

    @model_validator(mode="before")
    @classmethod
    def _check_keys(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise MashupError(f"merge config must be a mapping, got {type(data).__name__}")
        _refuse_unknown(data, tuple(cls.model_fields), "merge config")
        if data.get("parameters") is None and "parameters" in data:
            data = {**data, "parameters": {}}
        if "merge_method" not in data:
            raise MashupError("merge config has no merge_method", hint=_method_hint())
        if not data.get("models"):
            raise MashupError("merge config has no models (a non-empty list is required)")
        if not isinstance(data["models"], list):
            raise MashupError("merge config: models must be a list of {model, parameters}")
        if data.get("lora_mode") is not None and data["lora_mode"] not in LORA_MODES:
            raise MashupError(
                f"unknown lora_mode {data['lora_mode']!r}",
                hint=f"valid choices: {', '.join(LORA_MODES)}",
            )
        return data

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _check_dtype(cls, value: str | None) -> str | None:
        name = dtype_name(value)
        if name is not None and name not in DTYPES:
            raise MashupError(
                f"unknown dtype {value!r}", hint=f"valid choices: {', '.join(DTYPES)}"
            )
        return name

    @field_validator("rank")
    @classmethod
    def _check_rank(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise MashupError(f"rank must be a positive integer, got {value}")
        return value

    @model_validator(mode="after")
    def _check_method_and_parameters(self) -> MergeConfig:
        from mashup.merge.methods import METHODS

        spec = METHODS.get(self.merge_method)
        if spec is None:
            raise MashupError(f"unknown merge_method {self.merge_method!r}", hint=_method_hint())
        known = set(spec.shared_params) | set(spec.model_params)
        for where, params in [("parameters", self.parameters)] + [
            (f"models[{i}] ({m.model}) parameters", m.parameters) for i, m in enumerate(self.models)
        ]:
            for key, value in params.items():
                if key not in known:
                    raise MashupError(
                        f"unknown parameter {key!r} in {where} for merge_method "
                        f"{self.merge_method}",
                        hint=f"valid choices: {', '.join(sorted(known)) or 'none'}",
                    )
                _check_value(key, value, where)
        if self.rank is not None and self.lora_mode != "delta":
            raise MashupError(
                "rank is only used with lora_mode: delta (re-factorised adapter output)",
                hint="remove rank, or set lora_mode: delta",
            )
        names = [m.model for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise MashupError(f"merge config lists {', '.join(duplicates)} more than once")
        return self

    # -- loading and saving -----------------------------------------------------------------

    @classmethod
    def from_yaml(cls, path: Path | str) -> MergeConfig:
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise MashupError(f"{path}: cannot read merge config ({exc.strerror or exc})") from exc
        except yaml.YAMLError as exc:
            raise MashupError(f"{path}: not valid YAML ({exc})") from exc
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "merge config") -> MergeConfig:
        try:
            return cls.model_validate(data)
        except MashupError as exc:
            raise MashupError(f"{source}: {exc.message}", hint=exc.hint) from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "config"
            raise MashupError(f"{source}: {where}: {first['msg']}") from exc

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_dict(self) -> dict[str, Any]:
        data = self.model_dump(exclude_none=True)
        for model in data["models"]:
            if not model["parameters"]:
                del model["parameters"]
        if not data["parameters"]:
            del data["parameters"]
        return data

    # -- parameter lookup (model's own value first, then the global one, then the default) --

    def shared(self, name: str, default: Any) -> Any:
        return self.parameters.get(name, default)

    def model_param(self, model: str, name: str, default: Any) -> Any:
        for spec in self.models:
            if spec.model == model and name in spec.parameters:
                return spec.parameters[name]
        return self.parameters.get(name, default)


def _refuse_unknown(data: dict[str, Any], known: tuple[str, ...], what: str) -> None:
    for key in data:
        if key not in known:
            raise MashupError(
                f"unknown key {key!r} in {what}",
                hint=f"valid choices: {', '.join(known)}",
            )


def _check_value(key: str, value: Any, where: str) -> None:
    if isinstance(value, list | dict):
        raise MashupError(
            f"parameter {key!r} in {where} is a gradient or filter list; mashup takes scalars only"
        )
    if key in ("normalize", "int8_mask", "rescale", "filter_wise"):
        if not isinstance(value, bool):
            raise MashupError(f"parameter {key!r} in {where} must be true or false, got {value!r}")
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MashupError(f"parameter {key!r} in {where} must be a number, got {value!r}")
    if not math.isfinite(value):
        raise MashupError(f"parameter {key!r} in {where} must be finite, got {value!r}")
    if key == "density" and not 0 < value <= 1:
        raise MashupError(
            f"density {value} in {where} is outside (0, 1]",
            hint="density is the fraction of each task vector kept, e.g. 0.5",
        )
    if key == "gamma" and not 0 <= value < 1:
        raise MashupError(f"gamma {value} in {where} is outside [0, 1)")


def _method_hint() -> str:
    from mashup.merge.methods import METHODS

    return f"valid choices: {', '.join(METHODS)}"
