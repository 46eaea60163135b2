"""The public names: everything in `__all__` exists, is documented, and the list is sorted."""

from __future__ import annotations

import inspect

import kerrera


def test_all_is_sorted_and_complete() -> None:
    assert kerrera.__all__ == sorted(kerrera.__all__)
    # (names that are not identifiers come from pytest's assertion rewriting: Kerrera's
    # pytest plugin makes pytest rewrite the package)
    # (the layer packages are attributes of `kerrera` once imported; they are not names)
    public = {
        n
        for n in dir(kerrera)
        if not n.startswith("_") and n.isidentifier() and not inspect.ismodule(getattr(kerrera, n))
    }
    assert public == set(kerrera.__all__)


def test_public_names_have_docstrings() -> None:
    for name in kerrera.__all__:
        assert getattr(kerrera, name).__doc__, name


def test_telemetry_exports() -> None:
    from kerrera import telemetry

    assert telemetry.__all__ == sorted(telemetry.__all__)
    public = {
        n
        for n in dir(telemetry)
        if not n.startswith("_") and not inspect.ismodule(getattr(telemetry, n))
    }
    assert public == set(telemetry.__all__)
    for name in telemetry.__all__:
        value = getattr(telemetry, name)
        if inspect.isfunction(value):
            assert value.__doc__, name
