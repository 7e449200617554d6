"""What the registry says when a lookup finds nothing, worded once for both of its
paths (:mod:`.reads` and friends over SQLAlchemy, :mod:`.lite` over sqlite3).

Each function takes what the caller's own query found and returns (or raises) the
error, so the two paths can only differ in how they query, never in what they say.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import AliasNotFoundError, LeaseLapsedError, ModelNotFoundError, VersionNotFoundError

__all__ = ["alias_not_found", "lease_lapsed", "model_not_found", "version_not_found"]

_LS_HINT = "list models with: mvault ls"


def model_not_found(
    name: str, other_case: str | None, same_initial: Sequence[str]
) -> ModelNotFoundError:
    """No model ``name``: ``other_case`` is the model whose name differs only in case (if
    any), ``same_initial`` names starting like it (for "did you mean")."""
    if other_case is not None:
        return ModelNotFoundError(
            f"no model named {name!r}; did you mean {other_case!r}? (names are unique ignoring "
            "case, but a lookup needs the exact name)",
            hint=_LS_HINT,
        )
    import difflib  # only on this error path: start-up does not pay for it

    close = difflib.get_close_matches(name, list(same_initial), n=3)
    also = f"; did you mean {', '.join(close)}?" if close else ""
    return ModelNotFoundError(f"no model named {name!r}{also}", hint=_LS_HINT)


def version_not_found(model: str, spec: str, highest: Sequence[str]) -> VersionNotFoundError:
    """No version of ``model`` matches ``spec``; ``highest``: its highest versions."""
    what = f"highest versions: {', '.join(highest)}" if highest else "it has no versions yet"
    if spec == "latest" and highest:
        what = f"'latest' is the highest release and skips pre-releases; {what}"
        return VersionNotFoundError(
            f"model {model!r} has no version matching {spec!r}; {what}",
            hint=f"name the version (e.g. {model}@{highest[0]}), or point an alias at it",
        )
    return VersionNotFoundError(f"model {model!r} has no version matching {spec!r}; {what}")


def alias_not_found(model: str, alias: str, known: Sequence[str]) -> AliasNotFoundError:
    """``model`` has no alias ``alias``; ``known``: the aliases it has, sorted."""
    have = f"its aliases: {', '.join(known)}" if known else "it has no aliases"
    return AliasNotFoundError(f"model {model!r} has no alias {alias!r}; {have}")


def lease_lapsed(lapsed: Sequence[str]) -> LeaseLapsedError:
    """A push's lease no longer held ``lapsed`` (sorted) when its version was registered."""
    return LeaseLapsedError(
        f"the push's hold on {len(lapsed)} blob(s) (first: {lapsed[0]}) lapsed before its "
        "version was registered, so gc may have deleted them; nothing was registered",
        hint="push again: blobs still in the store are not uploaded twice",
    )
