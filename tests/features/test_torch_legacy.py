import io
import pickle
import struct

import numpy as np
import pytest

from core.features._torch_legacy import LEGACY_MAGIC_NUMBER, UnsafePickleError, load_legacy_state_dict
from core.features.efficientnet_lite import pretrained_weights_file


def _legacy_file(main_pickle: bytes, storage_keys=(), storages=b"") -> bytes:
    header = b"".join(pickle.dumps(obj, protocol=2) for obj in (
        LEGACY_MAGIC_NUMBER, 1001, {"protocol_version": 1001, "little_endian": True}))
    return header + main_pickle + pickle.dumps(list(storage_keys), protocol=2) + storages


class _RunsCode:
    """Unpickling this calls os.system: what a malicious weights file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_reads_the_real_efficientnet_lite0_state_dict():
    state = load_legacy_state_dict(pretrained_weights_file("efficientnet_lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_fc.weight"].dtype == np.float32
    assert np.isfinite(state["_blocks.15._bn2.running_var"]).all()
    assert (state["_bn1.running_var"] > 0).all()


def test_refuses_a_pickle_that_would_run_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weight": _RunsCode(marker)}, protocol=2)
    with pytest.raises(UnsafePickleError, match="posix.system|os.system|refusing"):
        load_legacy_state_dict(io.BytesIO(_legacy_file(payload)))
    assert not marker.exists(), "the malicious payload ran"


def test_refuses_code_in_the_header_pickles(tmp_path):
    marker = tmp_path / "pwned"
    data = pickle.dumps(_RunsCode(marker), protocol=2) + b"rest"
    with pytest.raises(UnsafePickleError):
        load_legacy_state_dict(io.BytesIO(data))
    assert not marker.exists()


def test_rejects_files_that_are_not_legacy_torch_files():
    with pytest.raises(ValueError, match="not a legacy PyTorch"):
        load_legacy_state_dict(io.BytesIO(b"PK\x03\x04 zip-format torch file"))
    with pytest.raises(ValueError, match="not a legacy PyTorch"):
        load_legacy_state_dict(io.BytesIO(pickle.dumps(12345, protocol=2)))


def test_rejects_a_truncated_weights_file():
    data = pretrained_weights_file("efficientnet_lite0").read_bytes()
    with pytest.raises(ValueError, match="truncated"):
        load_legacy_state_dict(io.BytesIO(data[: len(data) // 2]))


def test_builds_tensors_from_storage_views():
    """A tensor that views part of a storage (offset and strides) is read correctly."""

    # Hand-written protocol-2 pickle of {'w': _rebuild_tensor_v2(storage, 2, (2, 2), (1, 2), False, OD())}
    values = np.arange(8, dtype=np.float32)
    main = (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02("
            b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K\x08Ntq\x07"
            b"QK\x02K\x02K\x02\x86q\x08K\x01K\x02\x86q\t\x89ccollections\nOrderedDict\nq\n)Rq\x0btq\x0cRq\rs.")
    data = _legacy_file(main, ["0"], struct.pack("<q", 8) + values.tobytes())
    state = load_legacy_state_dict(io.BytesIO(data))
    np.testing.assert_array_equal(state["w"], np.array([[2, 4], [3, 5]], dtype=np.float32))


@pytest.mark.parametrize("elements, view", [
    (4, b"QK\x02K\x02K\x02\x86q\x08K\x01K\x02\x86q\t"),     # offset 2, (2, 2) view ends at element 5 of 4
    (8, b"QK\x02K\x02K\x02\x86q\x08K\x01K\x7f\x86q\t"),     # a stride of 127 jumps far past the storage
    (8, b"QK\x09K\x01K\x01\x86q\x08K\x01K\x01\x86q\t"),     # the offset alone is past the end
])
def test_refuses_tensor_views_that_reach_outside_their_storage(elements, view):
    """A crafted offset, size or stride must be an error, not a read of other memory (or a segfault)."""
    values = np.arange(elements, dtype=np.float32)
    main = (b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02("
            b"(X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05X\x03\x00\x00\x00cpuq\x06K"
            + bytes([elements]) + b"Ntq\x07" + view
            + b"\x89ccollections\nOrderedDict\nq\n)Rq\x0btq\x0cRq\rs.")
    data = _legacy_file(main, ["0"], struct.pack("<q", elements) + values.tobytes())
    with pytest.raises(ValueError, match="crafted weights file"):
        load_legacy_state_dict(io.BytesIO(data))
