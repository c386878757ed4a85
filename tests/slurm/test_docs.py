"""docs/cluster.md names only scripts and settings that exist, and documents every setting."""

import re

from tests.conftest import ROOT

DOC = (ROOT / "docs" / "cluster.md").read_text()
SCRIPTS = {p.name: p.read_text() for p in (ROOT / "slurm").iterdir() if p.suffix in (".sh", ".sbatch", ".py")}


def test_every_script_the_guide_names_exists():
    named = set(re.findall(r"slurm/([a-z_]+\.(?:sh|sbatch|py))", DOC))
    assert named and named <= set(SCRIPTS), named - set(SCRIPTS)


def test_every_setting_is_documented_and_every_documented_setting_is_read():
    code = "\n".join(SCRIPTS.values())
    # The user's settings: SRP_ variables the scripts read with a default or a test for being set.
    read = set(re.findall(r"\$\{(SRP_[A-Z_]+):[-+]", code))
    documented = set(re.findall(r"\b(SRP_[A-Z_]+)\b", DOC))
    assert read - documented == set()
    assert documented - read == set()
