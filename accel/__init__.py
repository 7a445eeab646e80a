"""accel-verify: block validation kernels (SHA-256/Merkle, Ed25519, option margin) on CUDA,
OpenCL or the C fallback, bit-identical on all three."""
from .backends import Backend, BackendUnavailable, KernelError, get_backend, probe
from .config import AccelConfig, ConfigError
from .ed25519 import ed25519_key_is_safe, ed25519_keys_are_safe, ed25519_verify, ed25519_verify_all, ed25519_verify_batch
from .merkle import MerkleProof, merkle_proof, merkle_root, sha256_many, verify_merkle_proof
from .packing import Packed
from .risk import MarginParams, Marks, Portfolio, greeks, portfolio_margin, standard_margin

__all__ = [
    "AccelConfig", "Backend", "BackendUnavailable", "ConfigError", "KernelError", "MarginParams", "Marks",
    "MerkleProof", "Packed", "Portfolio", "ed25519_key_is_safe", "ed25519_keys_are_safe",
    "ed25519_verify", "ed25519_verify_all", "ed25519_verify_batch",
    "get_backend", "greeks", "merkle_proof", "merkle_root", "portfolio_margin", "probe", "sha256_many",
    "standard_margin", "verify_merkle_proof",
]
