"""The load policy: which signers may publish which models (``MVAULT_TRUST``).

A trust file is TOML; each ``[[trust]]`` table names model patterns (shell
style, ``fnmatch``) and the signers allowed for them::

    [[trust]]
    models = ["resnet*", "vision/*"]
    keys = ["keys/release.pub"]             # PEM public keys, relative to this file

    [[trust.certificates]]
    roots = ["ca/root.pem"]                 # CA chain the signing certificate must lead to
    identity = "release@example.com"        # its e-mail/URI SAN (or subject CN)

    [[trust.sigstore]]                      # Sigstore keyless (Fulcio certificate, Rekor log)
    identity = "https://github.com/org/repo/.github/workflows/release.yml@refs/heads/main"
    issuer = "https://token.actions.githubusercontent.com"
    # staging = true                        # Sigstore's staging instance
    # trust_config = "sigstore-trust.json"  # a client trust configuration instead of the network

A model no table names is refused: a policy lists what may load, not what may
not. Every key and certificate file is read when the policy is, so a broken
policy fails at the first load, never silently allows.
"""

from __future__ import annotations

import fnmatch
import pathlib
from dataclasses import dataclass, field
from typing import Any

from ..errors import SignatureError
from .oms import SigstoreIdentity, key_id, load_public_key

__all__ = ["Rule", "TrustPolicy", "load_policy"]


@dataclass(frozen=True)
class Rule:
    """Model patterns and the signers allowed for them."""

    models: tuple[str, ...]
    keys: tuple[Any, ...] = ()
    key_files: tuple[pathlib.Path, ...] = ()
    certificates: tuple[tuple[tuple[pathlib.Path, ...], str], ...] = ()
    sigstore: tuple[SigstoreIdentity, ...] = ()

    def matches(self, model: str) -> bool:
        return any(fnmatch.fnmatchcase(model, p) for p in self.models)

    def describe(self) -> str:
        who = (
            [key_id(k) for k in self.keys]
            + [f"cert:{i}" for _, i in self.certificates]
            + [s.describe() for s in self.sigstore]
        )
        return " or ".join(who) or "nobody"


@dataclass(frozen=True)
class TrustPolicy:
    """The rules of one trust file."""

    path: pathlib.Path
    rules: tuple[Rule, ...] = field(default_factory=tuple)

    def rule_for(self, model: str) -> Rule:
        for rule in self.rules:
            if rule.matches(model):
                return rule
        raise SignatureError(
            f"the trust policy {self.path} allows no signer for model {model!r}",
            hint="add a [[trust]] table whose models match it, or unset MVAULT_TRUST",
        )


def _strings(value: Any, what: str, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise SignatureError(f"{where}: {what} must be a string or a list of strings")
    return tuple(value)


def _tables(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise SignatureError(f"{where}: sigstore must be [[trust.sigstore]] tables")
    return value


def _sigstore(t: dict[str, Any], base: pathlib.Path, where: str) -> SigstoreIdentity:
    extra = set(t) - {"identity", "issuer", "staging", "trust_config"}
    if extra:
        raise SignatureError(f"{where}: unknown sigstore key(s) {', '.join(sorted(extra))}")
    identity, issuer = t.get("identity"), t.get("issuer")
    if not isinstance(identity, str) or not identity or not isinstance(issuer, str) or not issuer:
        raise SignatureError(
            f"{where}: each sigstore identity needs identity and issuer (non-empty strings)"
        )
    if not issuer.startswith("https://"):
        raise SignatureError(f"{where}: sigstore issuer {issuer!r:.80} is not an https:// URL")
    staging = t.get("staging", False)
    if not isinstance(staging, bool):
        raise SignatureError(f"{where}: sigstore staging must be true or false")
    config = t.get("trust_config")
    if config is not None and staging:
        raise SignatureError(f"{where}: sigstore staging and trust_config are exclusive")
    if config is not None:
        if not isinstance(config, str) or not (base / config).is_file():
            raise SignatureError(f"{where}: sigstore trust_config {config!r:.120} is not a file")
        config = base / config
    return SigstoreIdentity(identity, issuer, staging, config)


def load_policy(path: str | pathlib.Path) -> TrustPolicy:
    """Parse and check a trust file; SignatureError with its line for any fault."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef,import-not-found,unused-ignore]

    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureError(f"cannot read trust file {p}: {exc}") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SignatureError(f"trust file {p} is not valid TOML: {exc}") from exc
    unknown = set(doc) - {"trust"}
    tables = doc.get("trust")
    if unknown or not isinstance(tables, list) or not tables:
        raise SignatureError(
            f"trust file {p}: expected one or more [[trust]] tables"
            + (f", found {', '.join(sorted(unknown))}" if unknown else "")
        )
    base = p.parent
    rules = []
    for n, t in enumerate(tables, 1):
        where = f"{p} [[trust]] #{n}"
        extra = set(t) - {"models", "keys", "certificates", "sigstore"}
        if extra:
            raise SignatureError(f"{where}: unknown key(s) {', '.join(sorted(extra))}")
        models = _strings(t.get("models"), "models", where)
        key_files = (
            tuple(base / k for k in _strings(t.get("keys", []), "keys", where))
            if t.get("keys")
            else ()
        )
        keys = tuple(load_public_key(k) for k in key_files)
        certs = []
        for c in t.get("certificates", []):
            if not isinstance(c, dict) or set(c) != {"roots", "identity"}:
                raise SignatureError(f"{where}: each certificate needs exactly roots and identity")
            roots = tuple(base / r for r in _strings(c["roots"], "roots", where))
            for r in roots:
                if not r.is_file():
                    raise SignatureError(f"{where}: certificate root {r} does not exist")
            certs.append((roots, _strings(c["identity"], "identity", where)[0]))
        keyless = tuple(_sigstore(c, base, where) for c in _tables(t.get("sigstore"), where))
        if not keys and not certs and not keyless:
            raise SignatureError(f"{where}: names no keys, certificates or Sigstore identities")
        rules.append(Rule(models, keys, key_files, tuple(certs), keyless))
    return TrustPolicy(p, tuple(rules))
