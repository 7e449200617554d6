"""modelvault.formats"""
