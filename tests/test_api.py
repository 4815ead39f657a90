"""The public API is a short, sorted __all__ (guarded like httpx guards its exports)."""

import fragility


def test_all_is_sorted_and_complete():
    assert fragility.__all__ == sorted(fragility.__all__)
    for name in fragility.__all__:
        assert hasattr(fragility, name), name
    public = {n for n in dir(fragility) if not n.startswith("_") and not isinstance(getattr(fragility, n), type(fragility))}
    assert public <= set(fragility.__all__) | {"annotations"}, public - set(fragility.__all__)


def test_errors_share_one_base():
    for name in fragility.__all__:
        obj = getattr(fragility, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, fragility.FragilityError)
