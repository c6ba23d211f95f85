"""Maps the import package ``monolith_serving`` onto the ``services/`` folder.

pyproject.toml holds all metadata; this file exists only because the package list
of a renamed package directory has to be computed.
"""

from setuptools import find_packages, setup

_SUBPACKAGES = find_packages("services")

setup(
    packages=["monolith_serving", *(f"monolith_serving.{name}" for name in _SUBPACKAGES)],
    package_dir={"monolith_serving": "services"},
)
