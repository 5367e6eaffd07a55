"""Package discovery for the folder-to-namespace mapping in pyproject.toml.

setuptools' `packages.find` cannot rename folders, so the subpackages of operator/ and agents/
are listed here under their `bakeline` names; everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

packages = ["bakeline", "bakeline.agents"]
packages += [f"bakeline.{name}" for name in find_packages("operator")]
packages += [f"bakeline.agents.{name}" for name in find_packages("agents")]
setup(packages=packages)
