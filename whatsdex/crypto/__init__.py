"""Encryption at rest: a master key outside the database wraps one data key per tenant."""

from whatsdex.crypto.aead import DecryptionError, aad, open_sealed, seal
from whatsdex.crypto.escrow import (
    WrongPassphrase,
    escrow_master_key,
    install_recovered_key,
    recover_master_key,
)
from whatsdex.crypto.keyring import Keyring, RotationResult, rotate_master_key
from whatsdex.crypto.masterkey import MasterKey, MasterKeyMismatch, master_key_id, open_master_key

__all__ = [
    "DecryptionError",
    "Keyring",
    "MasterKey",
    "MasterKeyMismatch",
    "RotationResult",
    "WrongPassphrase",
    "aad",
    "escrow_master_key",
    "install_recovered_key",
    "master_key_id",
    "open_master_key",
    "open_sealed",
    "recover_master_key",
    "rotate_master_key",
    "seal",
]
