"""Content-addressed blob stores and the local verified cache.

``open_store(url)`` opens ``file://``, ``s3://`` or ``memory://`` stores; the
S3 back end (and boto3) is imported only when an ``s3://`` URL is opened.
"""

from __future__ import annotations

from .base import BlobInfo, BlobStore, CallbackProgress, NullProgress, Progress
from .cache import BlobCache, CachedStore, default_cache
from .registry import open_store

__all__ = [
    "BlobCache",
    "BlobInfo",
    "BlobStore",
    "CachedStore",
    "CallbackProgress",
    "NullProgress",
    "Progress",
    "default_cache",
    "open_store",
]
