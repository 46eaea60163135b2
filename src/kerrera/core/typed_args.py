"""Structured args: a worker may declare a pydantic model or a dataclass for its args.

`new()` accepts an instance or a dict, validates it and stores plain JSON; the worker
receives the typed object, rebuilt (and validated again) from the stored JSON, so args
written by anyone (another service, an Elixir node) are checked before the worker runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from kerrera.core.errors import ConfigError

if TYPE_CHECKING:
    from kerrera.core.job import Job


class ArgsModel:
    """How one model class is validated, stored and rebuilt."""

    def __init__(self, model: type) -> None:
        self.model = model
        self._pydantic = _is_pydantic(model)
        self._adapter: Any = None
        if not self._pydantic and _has_pydantic():
            from pydantic import TypeAdapter  # validates a dataclass's field types too

            self._adapter = TypeAdapter(model)

    @classmethod
    def coerce(cls, model: object) -> ArgsModel:
        """An `ArgsModel` for `model`, or a `ConfigError` naming the option."""
        if isinstance(model, ArgsModel):
            return model
        if isinstance(model, type) and (_is_pydantic(model) or dataclasses.is_dataclass(model)):
            return cls(model)
        raise ConfigError(
            f"option 'args' must be a pydantic model class or a dataclass, got {model!r}"
        )

    def load(self, data: Any, worker: str = "") -> Any:
        """The typed object for stored `data` (a dict); invalid data is a ConfigError."""
        if isinstance(data, self.model):
            if self._adapter is not None:  # a dataclass is not validated when built
                return self._validated(dataclasses.asdict(data), worker)  # type: ignore[call-overload]
            return data  # a pydantic model was validated when built
        if not isinstance(data, Mapping):
            raise ConfigError(
                f"args of {worker or self.model.__name__} must be a dict, got {data!r}"
            )
        return self._validated(data, worker)

    def _validated(self, data: Mapping[str, Any], worker: str) -> Any:
        try:
            if self._pydantic:
                return self.model.model_validate(dict(data))  # type: ignore[attr-defined]
            if self._adapter is not None:
                return self._adapter.validate_python(dict(data))
            return self.model(**data)
        except Exception as exc:  # pydantic's ValidationError, or a dataclass's TypeError
            who = worker or self.model.__name__
            raise ConfigError(f"invalid args for {who}: {_explain(exc)}") from None

    def dump(self, value: Any, worker: str = "") -> dict[str, Any]:
        """Plain JSON-ready args from an instance or a dict (validated either way)."""
        typed = self.load(value, worker)
        if self._pydantic:
            # By alias: the stored form must be what `load` accepts again.
            return typed.model_dump(mode="json", by_alias=True)  # type: ignore[no-any-return]
        if self._adapter is not None:
            return self._adapter.dump_python(typed, mode="json", by_alias=True)  # type: ignore[no-any-return]
        return dataclasses.asdict(typed)


def from_signature(func: Callable[..., Any], skip: int = 0) -> ArgsModel | None:
    """The model annotated on the parameter after `job` (`def f(job, args: Model)`)."""
    params = list(inspect.signature(func).parameters.values())[skip:]
    if len(params) < 2:
        return None
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # an annotation that cannot be resolved: no inference
        return None
    hint = hints.get(params[1].name)
    if isinstance(hint, type) and (_is_pydantic(hint) or dataclasses.is_dataclass(hint)):
        return ArgsModel(hint)
    return None


def takes_args(func: Callable[..., Any], skip: int = 0) -> bool:
    """Whether `func` takes the typed args after the job."""
    return len(list(inspect.signature(func).parameters)[skip:]) >= 2


def typed_function(func: Callable[..., Any], model: ArgsModel, name: str) -> Callable[[Job], Any]:
    """`func(job, typed_args)` as a one-argument callable (for async functions it returns
    the coroutine, so the executor awaits it as usual)."""

    def call(job: Job) -> Any:
        return func(job, model.load(job.args, name))

    return call


def typed_method(
    method: Callable[..., Any], model: ArgsModel, name: str, is_async: bool
) -> Callable[..., Any]:
    """`process(self, job, typed_args)` as `process(self, job)`."""
    if is_async:

        async def process_async(self: Any, job: Job) -> Any:
            return await method(self, job, model.load(job.args, name))

        return process_async

    def process(self: Any, job: Job) -> Any:
        return method(self, job, model.load(job.args, name))

    return process


def _explain(exc: Exception) -> str:
    """One line per problem: `field.path: message` (pydantic), or the error itself."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            return "; ".join(
                f"{'.'.join(map(str, e.get('loc', ()))) or 'args'}: {e.get('msg')}"
                for e in errors()
            )
        except Exception:  # not pydantic's errors() after all
            pass
    return str(exc)


def _is_pydantic(model: type) -> bool:
    return any(
        c.__module__.startswith("pydantic") and c.__name__ == "BaseModel" for c in model.__mro__
    )


def _has_pydantic() -> bool:
    try:
        import pydantic  # noqa: F401
    except ImportError:
        return False
    return True
