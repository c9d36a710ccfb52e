"""The id rule for library entry points that take ids without a pydantic model."""

from __future__ import annotations

import pytest

from p4r.datasets.strings import check_ids, printable, unicode_problem
from p4r.errors import InputError


def test_check_ids_names_the_first_bad_id() -> None:
    check_ids(["a", "café", "\U0001f600"], "candidates")
    with pytest.raises(InputError) as info:
        check_ids(["a", "b\ud800"], "candidates")
    assert str(info.value) == ("field 'candidates[1]': a lone surrogate '\\ud800' at character "
                               "2 (not valid Unicode; send UTF-8 text)")
    with pytest.raises(InputError, match="field 'user_id': expected a non-empty string"):
        check_ids([""], "user_id", single=True)
    with pytest.raises(InputError, match="longer than the limit of 512"):
        check_ids(["x" * 513], "candidates")


def test_messages_stay_printable() -> None:
    assert unicode_problem("plain") is None and unicode_problem("é") is None
    assert printable("a\udc80b") == "a\\udc80b"
