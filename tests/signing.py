"""Sign a JPEG with a C2PA manifest using a throw-away CA made on the spot (tests only)."""

from __future__ import annotations

import datetime
import io

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

AI = "http://cv.iptc.org/newscodes/digitalsourcetype/trainedAlgorithmicMedia"


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def throwaway_chain() -> tuple[bytes, bytes]:
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=7))
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "miragedet test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_usage(True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, "test signer"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "miragedet tests"),
        ]
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(leaf_name)
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(_usage(False), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    chain = leaf.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(
        serialization.Encoding.PEM
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem


def root_of(chain: bytes) -> bytes:
    """The CA certificate (last PEM block) of a chain from :func:`throwaway_chain`."""
    blocks = [b for b in chain.split(b"-----END CERTIFICATE-----") if b.strip()]
    return blocks[-1].strip() + b"\n-----END CERTIFICATE-----\n"


def sign_jpeg(
    jpeg: bytes,
    source_type: str = AI,
    generator: str = "test-generator",
    chain: tuple[bytes, bytes] | None = None,
    ingredient: bytes | None = None,
) -> bytes:
    """``jpeg`` with a signed C2PA manifest. With ``ingredient`` (a signed JPEG) the manifest
    records an edit of that parent (c2pa.opened + c2pa.color_adjustments) instead of a creation
    with ``source_type``."""
    import c2pa

    chain_pem, key_pem = chain or throwaway_chain()
    signer = c2pa.Signer.from_info(
        c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, chain_pem, key_pem, None)
    )
    manifest = {
        "claim_generator_info": [{"name": generator, "version": "1.0"}],
        "title": "signed.jpg",
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {
                            "action": "c2pa.created",
                            "digitalSourceType": source_type,
                            "softwareAgent": {"name": generator, "version": "1.0"},
                        }
                    ]
                },
            }
        ],
    }
    builder = c2pa.Builder(manifest)
    if ingredient is not None:
        manifest["assertions"][0]["data"]["actions"] = [
            {"action": "c2pa.opened", "parameters": {"ingredientIds": ["parent"]}},
            {"action": "c2pa.color_adjustments"},
        ]
        builder = c2pa.Builder(manifest)
        builder.add_ingredient(
            {"title": "original.jpg", "relationship": "parentOf", "label": "parent"},
            "image/jpeg",
            io.BytesIO(ingredient),
        )
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(jpeg), out)
    return out.getvalue()
