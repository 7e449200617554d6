"""Exits into serving stacks: a Triton model repository, KServe's storage initializer.

:mod:`.triton` writes ``<model>/<integer version>/`` plus ``config.pbtxt``;
:mod:`.kserve` is what ``mvault pull mvault://NAME@SPEC /mnt/models`` does
when KServe runs it as a ``ClusterStorageContainer`` (``docs/SERVING.md``).
"""
