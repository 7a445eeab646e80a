"""A validator listed twice under two spellings of its address is refused (review s15: 127.0.0.1
and localhost, 127.1 or 2130706433, [::1] and [0:0:0:0:0:0:0:1] counted as two validators, so
one faulty validator counted twice in the nonce vote)."""
from __future__ import annotations

import pytest

from consensus.client import Client

OTHERS = ["http://10.0.0.12:26657", "http://10.0.0.13:26657"]


@pytest.mark.parametrize("a, b", [("http://127.0.0.1:26657", "http://localhost:26657"),
                                  ("http://127.0.0.1:26657", "127.1:26657"),
                                  ("http://127.0.0.1:26657", "http://2130706433:26657"),
                                  ("http://[::1]:26657", "http://[0:0:0:0:0:0:0:1]:26657"),
                                  ("http://LOCALHOST:26657", "http://localhost:26657/")])
def test_one_validator_under_two_spellings_is_refused(a, b):
    with pytest.raises(ValueError, match="the same validator as"):
        Client([a, *OTHERS, b])


def test_distinct_ports_and_unresolvable_names_stay_distinct():
    c = Client(["http://127.0.0.1:26657", "http://127.0.0.1:26658", "http://no-such-host.invalid:26657",
                "http://other-no-such-host.invalid:26657"])
    assert len(c.urls) == 4
