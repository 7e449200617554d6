"""modelvault.cli"""
