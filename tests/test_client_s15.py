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


@pytest.mark.parametrize("b", ["http://[::ffff:127.0.0.1]:26657", "http://[::ffff:7f00:1]:26657",
                               "http://0.0.0.0:26657"])
def test_mapped_and_unspecified_addresses_are_the_host_they_reach(b):
    with pytest.raises(ValueError, match="the same validator as"):
        Client(["http://127.0.0.1:26657", *OTHERS, b])


def test_named_validators_behind_one_address_stay_distinct(monkeypatch):
    """Four validators behind one reverse proxy under their own names (one address, port 443)
    were refused as one (review s15, second round)."""
    import socket
    real = socket.getaddrinfo

    def proxy(host, port, *args, **kwargs):
        if host.endswith(".example.net"):
            if kwargs.get("flags", 0) & socket.AI_NUMERICHOST:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("203.0.113.7", port))]
        return real(host, port, *args, **kwargs)
    monkeypatch.setattr(socket, "getaddrinfo", proxy)
    c = Client([f"https://v{i}.example.net" for i in range(4)])
    assert len(c.urls) == 4
    with pytest.raises(ValueError, match="the same validator as"):
        Client([f"https://v{i}.example.net" for i in range(3)] + ["https://203.0.113.7"])
