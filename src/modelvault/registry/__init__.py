"""modelvault.registry"""
