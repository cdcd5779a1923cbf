//! Client assertions for certificate credentials, without OpenSSL.
//!
//! Entra accepts, instead of a client secret, a JWT signed with the private key of a
//! certificate uploaded to the app registration (`client_assertion_type =
//! urn:ietf:params:oauth:client-assertion-type:jwt-bearer`). We build it ourselves:
//!
//! * header `{"alg":"RS256","typ":"JWT","x5t":"<base64url SHA-1 of the DER certificate>"}`
//! * claims `aud` = the token URL, `iss` = `sub` = client id, `jti` (random UUID),
//!   `nbf`/`iat` = now, `exp` = now + 10 minutes
//! * signature RS256 (RSASSA-PKCS1-v1_5 with SHA-256) through rustls's aws-lc-rs provider.
//!
//! The PEM file holds the certificate (first `CERTIFICATE` block = the one registered) and an
//! unencrypted private key (`PRIVATE KEY` PKCS#8 or `RSA PRIVATE KEY` PKCS#1).
//! `azure_identity`'s `ClientCertificateCredential` needs OpenSSL, hence this module.

use std::{
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use rustls::{SignatureScheme, sign::SigningKey};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use crate::{error::CredentialError, secret::Secret};

const WHO: &str = "client certificate";

/// A certificate's thumbprint and signing key.
pub(crate) struct LoadedCert {
    key: Arc<dyn SigningKey>,
    /// base64url(SHA-1(DER)).
    pub(crate) x5t: String,
}

impl std::fmt::Debug for LoadedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedCert")
            .field("x5t", &self.x5t)
            .finish_non_exhaustive()
    }
}

/// Reads and checks a PEM certificate + key file.
pub(crate) fn load_pem_file(path: &Path) -> Result<LoadedCert, CredentialError> {
    let bytes = std::fs::read(path).map_err(|e| {
        CredentialError::config(WHO, format!("cannot read {}: {e}", path.display()))
    })?;
    load_pem(&bytes, &path.display().to_string())
}

/// Parses PEM bytes (`name` is used in messages only).
pub(crate) fn load_pem(bytes: &[u8], name: &str) -> Result<LoadedCert, CredentialError> {
    let err = |m: String| CredentialError::config(WHO, format!("{name}: {m}"));
    let cert = CertificateDer::pem_slice_iter(bytes)
        .next()
        .ok_or_else(|| err("holds no CERTIFICATE block".into()))?
        .map_err(|e| err(format!("invalid certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        err(format!(
            "no usable private key ({e}); expected an unencrypted PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY (PKCS#1) block"
        ))
    })?;
    let key = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|_| err("the private key could not be loaded".into()))?;
    if key
        .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
        .is_none()
    {
        return Err(err(
            "the private key is not an RSA key (Entra client assertions need RS256)".into(),
        ));
    }
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &cert);
    Ok(LoadedCert {
        key,
        x5t: URL_SAFE_NO_PAD.encode(digest.as_ref()),
    })
}

/// A random UUID (version 4) string.
pub(crate) fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Builds and signs the client assertion JWT.
pub(crate) fn build_assertion(
    cert: &LoadedCert,
    client_id: &str,
    audience: &str,
    now: SystemTime,
) -> Result<Secret, CredentialError> {
    let now = now
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t": cert.x5t});
    let claims = serde_json::json!({
        "aud": audience,
        "iss": client_id,
        "sub": client_id,
        "jti": uuid_v4(),
        "nbf": now,
        "iat": now,
        "exp": now + 600,
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signer = cert
        .key
        .choose_scheme(&[SignatureScheme::RSA_PKCS1_SHA256])
        .ok_or_else(|| CredentialError::config(WHO, "the private key cannot sign RS256"))?;
    let sig = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| CredentialError::config(WHO, format!("signing the assertion failed: {e}")))?;
    Ok(Secret::new(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig)
    )))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// (PEM of cert + PKCS#8 key, DER cert, PKCS#1 RSAPublicKey).
    pub(crate) fn rsa_cert() -> (String, Vec<u8>, Vec<u8>) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        let cert = params.self_signed(&kp).unwrap();
        (
            format!("{}{}", cert.pem(), kp.serialize_pem()),
            cert.der().to_vec(),
            kp.public_key_raw().to_vec(),
        )
    }

    /// PKCS#8 → PKCS#1: the PrivateKeyInfo's OCTET STRING is the RSAPrivateKey.
    fn pkcs8_to_pkcs1(p8: &[u8]) -> Vec<u8> {
        fn tlv(b: &[u8]) -> (u8, &[u8], &[u8]) {
            let tag = b[0];
            let (len, hdr) = if b[1] < 0x80 {
                (b[1] as usize, 2)
            } else {
                let n = (b[1] & 0x7f) as usize;
                (
                    b[2..2 + n]
                        .iter()
                        .fold(0usize, |a, x| (a << 8) | *x as usize),
                    2 + n,
                )
            };
            (tag, &b[hdr..hdr + len], &b[hdr + len..])
        }
        let (_, seq, _) = tlv(p8);
        let (_, _version, rest) = tlv(seq);
        let (_, _alg, rest) = tlv(rest);
        let (tag, key, _) = tlv(rest);
        assert_eq!(tag, 0x04);
        key.to_vec()
    }

    fn verify(jwt: &str, der: &[u8], pubkey: &[u8], client_id: &str, aud: &str) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[0]).unwrap()).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
        let key = aws_lc_rs::signature::UnparsedPublicKey::new(
            &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256,
            pubkey,
        );
        key.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig)
            .expect("signature verifies");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        assert_eq!(header["x5t"], URL_SAFE_NO_PAD.encode(sha1.as_ref()));
        assert_eq!(claims["aud"], aud);
        assert_eq!(claims["iss"], client_id);
        assert_eq!(claims["sub"], client_id);
        let jti = claims["jti"].as_str().unwrap();
        assert_eq!(jti.len(), 36);
        let nbf = claims["nbf"].as_u64().unwrap();
        let exp = claims["exp"].as_u64().unwrap();
        assert_eq!(exp - nbf, 600);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!(nbf <= now + 1 && nbf + 5 >= now);
    }

    #[test]
    fn assertion_signature_and_claims() {
        let (pem, der, pubkey) = rsa_cert();
        let cert = load_pem(pem.as_bytes(), "test.pem").unwrap();
        let aud = "https://login.example/tenant/oauth2/v2.0/token";
        let jwt = build_assertion(&cert, "client-1", aud, SystemTime::now()).unwrap();
        verify(jwt.expose(), &der, &pubkey, "client-1", aud);
        let other = build_assertion(&cert, "client-1", aud, SystemTime::now()).unwrap();
        assert_ne!(jwt, other, "jti differs");
        assert!(!format!("{cert:?}").contains("PRIVATE"));
    }

    #[test]
    fn pkcs1_key_accepted() {
        let (pem, der, pubkey) = rsa_cert();
        let key_pem_start = pem.find("-----BEGIN PRIVATE KEY-----").unwrap();
        let p8 = PrivateKeyDer::from_pem_slice(&pem.as_bytes()[key_pem_start..]).unwrap();
        let p1 = pkcs8_to_pkcs1(p8.secret_der());
        let b64 = base64::engine::general_purpose::STANDARD.encode(p1);
        let mut pem1 = pem[..key_pem_start].to_owned();
        pem1.push_str("-----BEGIN RSA PRIVATE KEY-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem1.push_str(std::str::from_utf8(chunk).unwrap());
            pem1.push('\n');
        }
        pem1.push_str("-----END RSA PRIVATE KEY-----\n");
        let cert = load_pem(pem1.as_bytes(), "pkcs1.pem").unwrap();
        let jwt = build_assertion(&cert, "c", "aud", SystemTime::now()).unwrap();
        verify(jwt.expose(), &der, &pubkey, "c", "aud");
    }

    #[test]
    fn bad_files_are_explained() {
        let e = load_pem(b"nothing here", "x.pem").unwrap_err();
        assert!(e.to_string().contains("x.pem: holds no CERTIFICATE"), "{e}");
        let (pem, _, _) = rsa_cert();
        let cert_only = &pem[..pem.find("-----BEGIN PRIVATE KEY-----").unwrap()];
        let e = load_pem(cert_only.as_bytes(), "y.pem").unwrap_err();
        assert!(e.to_string().contains("no usable private key"), "{e}");
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let c = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .self_signed(&ec)
            .unwrap();
        let e = load_pem(
            format!("{}{}", c.pem(), ec.serialize_pem()).as_bytes(),
            "ec.pem",
        )
        .unwrap_err();
        assert!(e.to_string().contains("not an RSA key"), "{e}");
        let e = load_pem_file(Path::new("/nonexistent/cert.pem")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/cert.pem"), "{e}");
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_v4();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
