"""The data formats training reads: one module each, registered by ``training/layouts.py`` under its name.

A module here defines ``FORMAT``, a ``training.data_format.DataFormat`` (see that module for what it holds).
"""
