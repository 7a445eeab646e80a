"""A minimal BFT consensus loop whose validators validate every block through accel: the protocol
core (core.py), its wire format (messages.py), signature and Merkle work (verify.py), applications
(apps/) and drivers (sim.py)."""
