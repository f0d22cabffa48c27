"""JSONFolderDataset: records written one at a time, read back as a dict, {} when none."""

from __future__ import annotations

import pytest
from kedro.io.core import DatasetError

from multimodal_doubleloop.io import JSONFolderDataset


@pytest.mark.parametrize("root", ["local", "memory"])
def test_records_land_one_by_one_and_load_back(tmp_path, root):
    path = str(tmp_path / "cells") if root == "local" else "memory://study/cells"
    dataset = JSONFolderDataset(path)
    assert dataset.load() == {}  # nothing yet: an empty dict, not an error
    computed = []

    def cell(name):
        def make():
            computed.append(name)
            assert set(dataset.load()) == {"a", *computed[:-1]}  # earlier ones are already on disk
            return {"name": name}
        return make

    dataset.save({"a": {"name": "a"}})
    dataset.save({"b": cell("b"), "c": cell("c")})
    assert dataset.load() == {"a": {"name": "a"}, "b": {"name": "b"}, "c": {"name": "c"}}
    assert computed == ["b", "c"]


def test_a_name_that_is_a_path_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="plain file name"):
        JSONFolderDataset(str(tmp_path)).save({"../x": {}})
