import numpy as np
import pytest

from core._internal.memo import ArrayMemo, digest


def test_a_result_is_computed_once_per_arrays_and_parameters_and_comes_back_read_only():
    memo, calls = ArrayMemo(entries=2), []

    def compute(value):
        calls.append(value)
        return np.full(3, value, dtype=np.float64)

    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    first = memo.get([vectors], "a", lambda: compute(1.0))
    again = memo.get([vectors.copy()], "a", lambda: compute(2.0))
    assert again is first and calls == [1.0], "equal contents: remembered"
    with pytest.raises(ValueError, match="read-only"):
        first[0] = 5.0
    changed = vectors.copy()
    changed[0, 0] = -1
    assert memo.get([changed], "a", lambda: compute(3.0))[0] == 3.0, "other contents: computed"
    assert memo.get([vectors], "b", lambda: compute(4.0))[0] == 4.0, "other parameters: computed"
    assert memo.get([vectors], "a", lambda: compute(5.0))[0] == 5.0, "the oldest of two entries was dropped"
    assert calls == [1.0, 3.0, 4.0, 5.0]


def test_the_digest_tells_shapes_and_dtypes_apart():
    values = np.arange(6, dtype=np.float32)
    assert digest([values]) == digest([values.copy()])
    assert digest([values]) != digest([values.reshape(2, 3)])
    assert digest([values]) != digest([values.view(np.int32)])
    assert digest([values[::2]]) == digest([np.ascontiguousarray(values[::2])]), "a strided view hashes its values"
    with pytest.raises(ValueError, match="entries"):
        ArrayMemo(entries=0)
