from __future__ import annotations

import pytest

from modelhost.errors import ValidationError
from modelhost.runtimes.registry import load_runtime, runtime_names


def test_sklearn_is_registered() -> None:
    assert "sklearn" in runtime_names()
    assert load_runtime("sklearn").name == "sklearn"


def test_unknown_runtime_lists_the_known_ones() -> None:
    with pytest.raises(ValidationError, match="Unknown runtime 'caffe': known runtimes are sklearn"):
        load_runtime("caffe")
