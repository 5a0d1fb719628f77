"""Readers for real data formats and synthetic multi-site generators.

Task packs load data through this package so that a format is parsed in one place and
every reader reports bad input the same way (``fedmed.errors.DataError`` naming the file).
"""
