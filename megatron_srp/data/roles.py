"""The per-token role sidecar of SRP data: ``PREFIX.roles.bin/.idx`` next to ``PREFIX.bin/.idx``.

An indexed dataset with exactly the token dataset's document lengths; each value says whether the
token is document text or an inserted reflection. Written by tools/preprocess_data.py (srp), read by
``RoleAwareGPTDataset``. (No torch import here: preprocessing workers import this module.)
"""

import os

ROLE_TEXT = 0
ROLE_REFLECTION = 1
ROLES_SUFFIX = ".roles"


def roles_prefix(prefix: str) -> str:
    return prefix + ROLES_SUFFIX


def has_roles(prefix: str) -> bool:
    p = roles_prefix(prefix)
    return os.path.exists(p + ".bin") and os.path.exists(p + ".idx")
