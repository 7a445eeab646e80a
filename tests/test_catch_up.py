"""A validator 5,000 blocks behind catches up (issue 22): it was down while the other three
committed 5,000 (empty) blocks, and on its start it fetches them in ranges (BlockRequest from its
committed height, MAX_RANGE a response), validates each, and commits with the others again."""
from consensus.sim import Simulation


def test_a_validator_5000_blocks_behind_catches_up():
    # software-only validation: PyNaCl is quicker than the C fallback's batch set-up on the few
    # signatures of an empty block
    sim = Simulation(n=4, seed=1, txs_per_block=1, validation="software")
    sim.crashed.add("v3")
    sim.run(blocks=5_000, max_ms=10**9, live=lambda node: node.name != "v3")
    assert len(sim._node("v3").committed) == 0 and min(len(n.committed) for n in sim.nodes[:3]) >= 5_000
    sim.crashed.discard("v3")
    v3 = sim._node("v3")
    sim.run(blocks=5_020, max_ms=10**9, live=lambda node: True)
    assert len(v3.committed) >= 5_020
    chains = sim.chains()
    assert chains["v3"][:5_020] == chains["v0"][:5_020]
    assert not v3.rejected and not v3.core.counters.get("fetches_full")
