"""Review s19 (minor, CPU): a Byzantine validator's valid timeouts carrying real old QCs are never
muted, and one for a future view below the one already held from that voter was dropped by
_tally_timeout only after its QC's quorum and its own signature were checked: cycling more than
GOOD_QCS (32) real QCs, every frame cost quorum + 1 signature checks, for ever. Now Core._superseded
drops it first."""
from consensus.messages import Timeout, timeout_bytes
from consensus.sim import Simulation


def test_a_superseded_future_timeout_costs_no_signature_check():
    sim = Simulation(n=4, seed=1)
    sim.load(40)
    sim.run(blocks=60, max_ms=60_000)
    core = sim.nodes[0].core
    qcs = []
    for b, _, _ in sim.nodes[1].committed:
        if b.qc.view > 0 and b.qc not in qcs:
            qcs.append(b.qc)
    assert len(qcs) > 40
    key, net = sim.keys[1], sim.network

    def timeout(view, qc):
        return Timeout(view, qc, 1, key.sign(timeout_bytes(view, qc.view, net)).signature)
    far = core.view + 1_000
    core.handle(1, timeout(far, qcs[0]))   # held: v1's latest timeout ahead
    checked = []
    verify = core.app.verifier.verify_lists
    core.app.verifier.verify_lists = lambda k, m, s: checked.append(len(k)) or verify(k, m, s)
    for i in range(100):                   # each below the held one: dropped by _tally_timeout
        core.handle(1, timeout(far - 1 - (i % 2), qcs[1 + i % 40]))
    assert sum(checked) == 0, f"{sum(checked)} signature checks for 100 timeouts that were all dropped"
    core.handle(1, timeout(far + 1, qcs[2]))  # a later one is checked and replaces the one held
    assert sum(checked) > 0 and 1 in core.timeouts.get(far + 1, {}) and 1 not in core.timeouts.get(far, {})
