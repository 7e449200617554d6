"""Signing commands: ``sign``, and the signing options of ``push``, ``pull`` and ``verify``.

``push --sign KEY`` checks the key before anything is pushed; ``pull
--signature`` writes the native files with ``model.sig`` next to them, which
``model_signing verify`` checks on its own; ``verify --signatures`` checks every
variant's signatures against a trust policy or the given public keys.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgumentError, SignatureError
from ._common import add_json, emit, open_vault


def _vault(*, write: bool) -> Any:
    return open_vault(write=write)


def _key_args(p: argparse.ArgumentParser, flag: str) -> None:
    p.add_argument(
        "--certificate", metavar="CERT", help="PEM signing certificate for the key (with --chain)"
    )
    p.add_argument(
        "--chain",
        action="append",
        default=[],
        metavar="PEM",
        help="intermediate/root certificates to put in the signature (repeatable)",
    )


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sign", help="sign every variant of a version: NAME@SPEC --key KEY (or --sigstore)"
    )
    p.add_argument("spec", metavar="NAME[@SPEC]")
    p.add_argument("--key", type=Path, help="PEM private key (ECDSA P-256/384)")
    _key_args(p, "--key")
    p.add_argument(
        "--sigstore",
        action="store_true",
        help="Sigstore keyless instead of a key: an OIDC identity, a Fulcio certificate, "
        "the signature logged in Rekor (needs the network)",
    )
    p.add_argument(
        "--identity-token",
        metavar="JWT",
        help="(--sigstore) the OIDC token; default: the ambient CI credential, else a browser flow",
    )
    p.add_argument("--oidc-issuer", metavar="URL", help="(--sigstore) another OIDC issuer")
    p.add_argument(
        "--sigstore-staging", action="store_true", help="(--sigstore) Sigstore's staging instance"
    )
    p.add_argument(
        "--trust-config",
        type=Path,
        metavar="JSON",
        help="(--sigstore) a Sigstore client trust configuration instead of the public one",
    )
    add_json(p)
    p.set_defaults(func=run_sign)

    # The signing options of commands other modules define.
    push = sub.choices.get("push")
    if push is not None:
        push.add_argument(
            "--sign", metavar="KEY", type=Path, help="sign the pushed version with this private key"
        )
        _key_args(push, "--sign")
        push.set_defaults(func=_push_and_sign(push.get_default("func")))
    pull = sub.choices.get("pull")
    if pull is not None:
        pull.add_argument(
            "--signature",
            action="store_true",
            help="write into the directory -o the signed files and model.sig (OMS)",
        )
        pull.set_defaults(func=_pull_signed(pull.get_default("func")))
    verify = sub.choices.get("verify")
    if verify is not None:
        verify.add_argument(
            "--signatures",
            action="store_true",
            help="check signatures (against MVAULT_TRUST, --trust or --key) instead of blobs",
        )
        verify.add_argument(
            "--trust", type=Path, metavar="FILE", help="a trust file to check against"
        )
        verify.add_argument(
            "--key",
            dest="public_keys",
            action="append",
            default=[],
            type=Path,
            metavar="PUB",
            help="an allowed PEM public key (repeatable)",
        )
        verify.set_defaults(func=_verify_signatures(verify.get_default("func")))


def _load_key(args: argparse.Namespace, path: Path) -> Any:
    from ..signing import load_signing_key

    if args.chain and not args.certificate:
        raise InvalidArgumentError("--chain needs --certificate")
    return load_signing_key(path, certificate=args.certificate, chain=args.chain)


def _human_signed(results: list[dict[str, Any]]) -> None:
    for r in results:
        state = "signed" if r["added"] else "already signed"
        sys.stdout.write(
            f"{state} {r['model']}:{r['version']} variant {r['manifest_digest'][:19]} by {r['signer']}\n"
        )


def _sign(spec: str, key: Any) -> list[dict[str, Any]]:
    from dataclasses import asdict

    from ..signing import sign_version

    vault = _vault(write=True)
    try:
        return [asdict(r) for r in sign_version(vault.pipeline, spec, key)]
    finally:
        vault.close()


def run_sign(args: argparse.Namespace) -> int:
    keyless_only = (args.identity_token, args.oidc_issuer, args.sigstore_staging, args.trust_config)
    if args.sigstore:
        if args.key or args.certificate or args.chain:
            raise InvalidArgumentError("--sigstore signs without a key: drop --key/--certificate")
        from ..signing import SigstoreSigner

        if args.trust_config is not None and args.sigstore_staging:
            raise InvalidArgumentError("--sigstore-staging and --trust-config are exclusive")
        if args.trust_config is not None and not args.trust_config.is_file():
            raise InvalidArgumentError(f"--trust-config {args.trust_config} is not a file")
        key: Any = SigstoreSigner(
            args.identity_token, args.sigstore_staging, args.oidc_issuer, args.trust_config
        )
    elif args.key is None:
        raise InvalidArgumentError("sign needs --key KEY or --sigstore")
    elif any(keyless_only):
        raise InvalidArgumentError(
            "--identity-token, --oidc-issuer, --sigstore-staging and --trust-config go with --sigstore"
        )
    else:
        key = _load_key(args, args.key)
    emit(_sign(args.spec, key), as_json=args.json, human=_human_signed)
    return 0


def _push_and_sign(
    push: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if args.sign is None:
            if args.certificate or args.chain:
                raise InvalidArgumentError("--certificate and --chain need --sign KEY")
            return push(args)
        key = _load_key(args, args.sign)  # a bad key stops the push before any byte is stored
        rc = push(args)
        if rc:
            return rc
        from ..vault import _split_ref

        name, version = _split_ref(args.ref, None)
        try:
            results = _sign(f"{name}:{version}", key)
        except Exception as exc:
            raise SignatureError(
                f"pushed {name}:{version} but could not sign it: {str(exc).splitlines()[0]}",
                hint=f"sign it later: mvault sign {name}:{version} --key {args.sign}",
            ) from exc
        if not args.json:  # the push's JSON document stays the only one on stdout
            _human_signed(results)
        return 0

    return run


def _pull_signed(
    pull: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.signature:
            return pull(args)
        from ..signing import pull_signed

        vault = _vault(write=False)
        try:
            path = pull_signed(
                vault.pipeline, args.spec, args.output, variant=args.variant, device=args.device
            )
        finally:
            vault.close()
        emit(
            {"path": str(path), "signature": str(path / "model.sig")},
            as_json=args.json,
            human=lambda d: sys.stdout.write(f"wrote {d['path']} (signature {d['signature']})\n"),
        )
        return 0

    return run


def _verify_signatures(
    verify: Callable[[argparse.Namespace], int],
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not args.signatures:
            if args.trust or args.public_keys:
                raise InvalidArgumentError("--trust and --key go with --signatures")
            return verify(args)
        if not args.spec:
            raise InvalidArgumentError("verify --signatures needs NAME[@SPEC]")
        report = check_version(args.spec, args.trust, args.public_keys)

        def human(r: dict[str, Any]) -> None:
            for v in r["variants"]:
                if v["ok"]:
                    sys.stdout.write(f"OK {v['manifest_digest'][:19]} signed by {v['signer']}\n")
                else:
                    sys.stdout.write(f"UNTRUSTED {v['manifest_digest'][:19]}: {v['error']}\n")

        emit(report, as_json=args.json, human=human)
        bad = [v for v in report["variants"] if not v["ok"]]
        if bad:
            sys.stderr.write(f"mvault: error: {bad[0]['error']}\n")
            return 5
        return 0

    return run


def check_version(spec: str, trust: Path | None, public_keys: list[Path]) -> dict[str, Any]:
    """Every variant of ``spec`` against a trust file, MVAULT_TRUST, or bare public keys."""
    from ..loader import read_manifest
    from ..signing import check_trust, current_policy, load_policy, variant_signatures
    from ..signing.oms import load_public_key
    from ..signing.policy import Rule, TrustPolicy

    if trust is not None:
        policy = load_policy(trust)
    elif public_keys:
        keys = tuple(load_public_key(k) for k in public_keys)
        policy = TrustPolicy(Path("--key"), (Rule(("*",), keys, tuple(public_keys)),))
    else:
        found = current_policy()
        if found is None:
            raise InvalidArgumentError(
                "verify --signatures needs signers to check against: --key PUB, --trust FILE "
                "or MVAULT_TRUST"
            )
        policy = found
    vault = _vault(write=False)
    try:
        info = vault.pipeline.resolve(spec)
        out = []
        for v in info.variants:
            manifest, _ = read_manifest(vault.store, v.manifest_digest)
            try:
                signed, _ = check_trust(
                    policy, info, v, manifest, variant_signatures(vault.store, v)
                )
                out.append(
                    {"manifest_digest": v.manifest_digest, "ok": True, "signer": signed.signer}
                )
            except SignatureError as exc:
                out.append({"manifest_digest": v.manifest_digest, "ok": False, "error": str(exc)})
        return {"model": info.model, "version": info.version, "variants": out}
    finally:
        vault.close()
