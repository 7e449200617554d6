"""The versioned container and the format plugins.

``container`` and ``manifest`` are the format itself; ``bundle`` is the
single-file form; ``registry`` maps plugin names to their (lazily imported)
classes. Nothing here imports torch.
"""
