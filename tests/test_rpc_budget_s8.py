"""The client API's verification budget (rpc.WorkBudget), eighth session: who gets the loop's
verification time when clients together ask for more than submit_total_s.

Found by the previous helper (simulated on WorkBudget): four addresses each using its own
submit_share_s (0.1 s a second) took all of submit_total_s (0.4 s a second), and every other
client was refused (429) for as long as they kept at it: 400 of 400 honest attempts over 40 s.
The total was one bucket, first come first served: it crossed zero, and the next request, most
likely one of the four's, took it. Fixed: the total stays a hard bound, and while it is
contended (under one second's worth left) each active client (an IPv4 address, an IPv6 /48:
rpc.site_of) may take only its part of it, total / (active clients) a second, counted on a
shared fair clock; what the light clients leave goes back to the total, and to whoever asks.

Every test drives WorkBudget with an injected clock (`now`) and charges of given seconds: the
outcome is a function of the inputs, no wall clock is read or asserted."""
import heapq

import pytest

from consensus import rpc as rpc_mod
from consensus.rpc import WorkBudget

T0 = 1e6  # the injected clock's start (any value: WorkBudget takes its first `now` as its start)
ATTACKERS = [f"10.66.0.{i}" for i in range(1, 5)]
HONEST = "10.1.2.3"


def simulate(budget: WorkBudget, clients, seconds: float, t0: float = T0):
    """Runs clients against budget for `seconds` of the injected clock. clients: (name, period,
    cost, offset) each: it asks every `period` seconds from t0 + offset, and each request admitted
    is charged `cost` seconds. Returns {name: [attempts, admitted, seconds admitted]}; names may
    repeat (one client with several paces), the results are summed per name."""
    out = {name: [0, 0, 0.0] for name, *_ in clients}
    events = [(t0 + offset, i) for i, (_, _, _, offset) in enumerate(clients)]
    heapq.heapify(events)
    end = t0 + seconds
    while events:
        at, i = heapq.heappop(events)
        if at >= end:
            continue
        name, period, cost, _ = clients[i]
        row = out[name]
        row[0] += 1
        reason, wait = budget.refusal(name, at)
        if not reason:
            budget.charge(name, cost)
            row[1] += 1
            row[2] += cost
        else:
            assert wait > 0 and "\n" not in reason
        heapq.heappush(events, (at + period, i))
    return out


def four_heavy(period=0.01, cost=0.02):
    """Four addresses at the default request rate (100 a second each), each request 20 ms of
    verification (a batch of a few hundred invalid signatures on the C fallback)."""
    return [(a, period, cost, 0.0025 * k + 0.0001) for k, a in enumerate(ATTACKERS)]


def test_four_heavy_clients_no_longer_keep_an_honest_one_out():
    """The reported case: four clients at their share (0.1 s a second each, 0.4 s in all) and an
    honest one asking every 0.1 s for 5 ms. Before: 400 of its 400 attempts refused. Now it is
    under its fair part (0.4 / 5 = 0.08 s a second; it asks for 0.05), and all are admitted."""
    budget = WorkBudget(0.1, 0.4)
    out = simulate(budget, four_heavy() + [(HONEST, 0.1, 0.005, 0.0503)], 40.0)
    attempts, admitted, _ = out[HONEST]
    assert attempts == 400
    assert admitted == 400, out
    heavy = sum(out[a][2] for a in ATTACKERS)
    assert heavy + out[HONEST][2] <= 0.4 * 40 + 2 * 0.4 + 0.02  # the total: its rate, its 2 s burst, one overdraft


def test_an_honest_client_asking_as_fast_as_the_heavy_ones_gets_its_fair_part():
    """Five clients all asking far over their share: each gets about total / 5 (0.08 s a second),
    the honest one included, and together no more than the total."""
    budget = WorkBudget(0.1, 0.4)
    seconds = 60.0
    out = simulate(budget, four_heavy() + [(HONEST, 0.01, 0.005, 0.0007)], seconds)
    fair = 0.4 / 5 * seconds
    assert out[HONEST][2] >= 0.85 * fair, out
    for a in ATTACKERS:
        assert out[a][2] <= 1.15 * fair + 0.2, (a, out)
    assert sum(row[2] for row in out.values()) <= 0.4 * seconds + 2 * 0.4 + 0.02


@pytest.mark.parametrize("attackers", [9, 39])
def test_with_a_addresses_against_it_an_honest_client_gets_one_in_a_plus_one(attackers):
    """However many addresses the attacker asks from (each at the request rate, a rotation of
    them), the honest client is slowed to about total / (A + 1), never refused for good."""
    budget = WorkBudget(0.1, 0.4)
    seconds = 60.0
    clients = [(f"10.77.{k // 250}.{k % 250}", 0.01, 0.02, 0.0001 * k + 0.00003) for k in range(attackers)]
    out = simulate(budget, clients + [(HONEST, 0.01, 0.005, 0.0007)], seconds)
    fair = 0.4 / (attackers + 1) * seconds
    assert out[HONEST][2] >= 0.7 * fair, (out[HONEST], fair)
    assert sum(row[2] for row in out.values()) <= 0.4 * seconds + 2 * 0.4 + 0.02


def test_rotating_addresses_cannot_take_more_than_the_total(monkeypatch):
    """An attacker asking from a fresh address each time (more addresses than the budget tracks,
    so the oldest are forgotten with whatever they owed): together its requests are admitted no
    faster than the total (its rate plus its 2 s burst plus one request's overdraft), and the
    tables stay within CLIENTS_TRACKED."""
    monkeypatch.setattr(rpc_mod, "CLIENTS_TRACKED", 300)
    budget = WorkBudget(0.1, 0.4)
    seconds, cost = 30.0, 0.05
    t, admitted, k = T0, 0.0, 0
    while t < T0 + seconds:
        client = f"10.{(k // 65536) % 256}.{(k // 256) % 256}.{k % 256}"
        if not budget.refusal(client, t)[0]:
            budget.charge(client, cost)
            admitted += cost
        k += 1
        t += 0.0005  # 2,000 requests a second (the default rate limit of all clients together)
    assert admitted <= 0.4 * seconds + 2 * 0.4 + cost
    assert admitted >= 0.9 * 0.4 * seconds  # the total is still used (a hard bound, not a lockout)
    assert len(budget.clients) <= 300 and len(budget.sites) <= 300 and len(budget.active) <= 300


def test_rotating_addresses_among_a_few_do_not_shut_an_honest_one_out():
    """Twenty addresses taking turns (each request from the next one, 2,000 a second in all):
    the honest client still gets its part, about total / 21."""
    budget = WorkBudget(0.1, 0.4)
    seconds = 60.0
    clients = [(f"10.88.0.{k % 20}", 0.01, 0.02, 0.0005 * k + 0.00001) for k in range(20)]
    out = simulate(budget, clients + [(HONEST, 0.01, 0.005, 0.0007)], seconds)
    assert out[HONEST][2] >= 0.7 * 0.4 / 21 * seconds, out[HONEST]


def test_an_ipv6_site_is_one_client_of_the_total():
    """Thirty /64s of one /48 (each its own share: 3 s a second together) are one client of the
    total: an honest client from another site still gets its whole share (0.1 s a second, under
    its fair part of 0.2)."""
    budget = WorkBudget(0.1, 0.4)
    seconds = 40.0
    clients = [(rpc_mod.client_of(f"2001:db8:66:{k:x}::1"), 0.01, 0.02, 0.0003 * k + 0.00002) for k in range(30)]
    out = simulate(budget, clients + [(HONEST, 0.01, 0.005, 0.0007)], seconds)
    assert out[HONEST][2] >= 0.9 * 0.1 * seconds, out[HONEST]
    assert sum(row[2] for row in out.values()) <= 0.4 * seconds + 2 * 0.4 + 0.02


def test_a_lone_client_still_gets_its_whole_share():
    budget = WorkBudget(0.1, 0.4)
    seconds = 30.0
    out = simulate(budget, [(HONEST, 0.001, 0.005, 0.0)], seconds)
    assert 0.95 * 0.1 * seconds <= out[HONEST][2] <= 0.1 * seconds + 2 * 0.1 + 0.005


def test_what_light_clients_leave_goes_to_the_heavy_ones():
    """Max-min, not a fixed split: two heavy clients (share 0.3 s a second each) and three light
    ones (0.01 s a second each) under a total of 0.4: the light ones get all they ask for, and
    the heavy ones share the rest (about 0.185 each), not just total / 5 (0.08)."""
    budget = WorkBudget(0.3, 0.4)
    seconds = 60.0
    heavy = [("10.9.0.1", 0.01, 0.02, 0.0001), ("10.9.0.2", 0.01, 0.02, 0.0051)]
    light = [(f"10.9.1.{k}", 0.5, 0.005, 0.1 * k + 0.0003) for k in range(3)]
    out = simulate(budget, heavy + light, seconds)
    for name, *_ in light:
        assert out[name][1] == out[name][0], out
    for name, *_ in heavy:
        assert out[name][2] >= 0.15 * seconds, out
    assert sum(row[2] for row in out.values()) <= 0.4 * seconds + 2 * 0.4 + 0.02


def test_the_refusals_say_which_bound_and_when_to_come_back():
    """The three refusals: the client's share, the total, and (contended) its fair part; each one
    line with a positive wait, the share's and the total's words as before."""
    budget = WorkBudget(0.1, 0.4)
    t = T0
    assert budget.refusal("10.0.0.1", t) == ("", 0.0)
    budget.charge("10.0.0.1", 0.5)
    reason, wait = budget.refusal("10.0.0.1", t)
    assert reason.startswith("10.0.0.1 is over its share of this validator's verification time") and wait > 0
    budget = WorkBudget(1.0, 0.4)  # a share over the total: only the total and the fair part refuse
    assert budget.refusal("10.0.0.2", t) == ("", 0.0)
    budget.charge("10.0.0.2", 0.85)  # the total: 0.8 - 0.85 < 0
    reason, wait = budget.refusal("10.0.0.3", t)
    assert "over this validator's verification time" in reason and wait > 0
    t += 0.5  # the total refills to 0.15: contended, and 10.0.0.2 owes its fair part
    reason, wait = budget.refusal("10.0.0.2", t)
    assert "fair part" in reason and "10.0.0.2" in reason and wait > 0 and "\n" not in reason
    assert budget.refusal("10.0.0.3", t) == ("", 0.0)  # a client that owes nothing is admitted


def test_an_injected_clock_before_the_budgets_start_does_not_break_it():
    """The clock a caller passes may start anywhere (time.monotonic is only the default)."""
    budget = WorkBudget(0.1, 0.4)
    assert budget.refusal("10.0.0.1", 0.0) == ("", 0.0)
    budget.charge("10.0.0.1", 0.05)
    assert budget.refusal("10.0.0.1", 0.1) == ("", 0.0)
