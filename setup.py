"""Only what pyproject.toml cannot say: the top-level conf/ folder ships as the package data folder diet/conf/.

The package list is found (every diet subpackage) plus that mapped folder, so a new subpackage needs no edit here.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["diet", "diet.*"]) + ["diet.conf"],
    package_dir={"diet.conf": "conf"},
)
