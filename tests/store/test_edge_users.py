"""The Edge user state on a full disk: one error naming the file, nothing half-written, and
it works again once there is space."""

from __future__ import annotations

import numpy as np
import pytest

from p4r.encoder.fingerprint import Fingerprint
from p4r.errors import StorageFullError
from p4r.settings import ProfileParams
from p4r.store.edge_users import EdgeUserStore
from p4r.store.users import InteractionRecord
from tests.conftest import SmallDisk

FP = Fingerprint(model="t", weights_sha256="0" * 64, dim=384, max_seq_length=64)


def _record(item: str, text: str = "") -> InteractionRecord:
    return InteractionRecord(user_id="u", item_id=item, timestamp=1_700_000_000, text=text)


def test_a_write_on_a_full_disk_is_one_error_naming_the_file(small_disk: SmallDisk) -> None:
    path = small_disk.root / "users" / "demo.sqlite"
    store = EdgeUserStore(path, "demo", FP, ProfileParams())
    rng = np.random.default_rng(0)
    try:
        assert store.record([_record("first")], rng.normal(size=(1, 384))) == [True]
        small_disk.fill()
        with pytest.raises(StorageFullError) as info:
            for n in range(50):  # enough to need new pages whatever sqlite had spare
                store.record([_record(f"big-{n}", "x" * 20_000)], rng.normal(size=(1, 384)))
        assert info.value.path == str(path)
        assert "cannot rollback" not in str(info.value)
        kept = [r.item_id for r in store.interactions("u")]
        assert kept[0] == "first" and all(i.startswith("big-") for i in kept[1:])
        profile = store.profiles(["u"])["u"]
        assert profile.count == len(kept), "the profile matches what was committed"
        small_disk.free()
        assert store.record([_record("after")], rng.normal(size=(1, 384))) == [True]
    finally:
        store.close()
