"""Shared helpers of the torch format plugins.

Most modules here import torch at module level; only the torch plugins import
them, and the plugin table imports those lazily, so ``import modelvault`` stays
torch-free. ``graph_check``, ``sym_check`` and ``pt2_archive`` need no torch: they read what
torch wrote (program JSON, ``.pt2`` archives) without torch, before torch
parses any of it.
"""
