"""modelvault.storage"""
