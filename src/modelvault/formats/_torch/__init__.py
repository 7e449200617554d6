"""Shared helpers of the torch format plugins.

Every module here imports torch at module level; only the torch plugins import
this package, and the plugin table imports those lazily, so ``import
modelvault`` stays torch-free.
"""
