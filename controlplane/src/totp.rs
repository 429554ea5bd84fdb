//! Time-based one-time passwords (RFC 6238 over RFC 4226: HMAC-SHA1,
//! [`TOTP_STEP_SECONDS`] steps, [`TOTP_DIGITS`] digits), the second
//! factor of a step-up ([`crate::principals::step_up`]), and the sealing
//! of a principal's secret at rest with the platform's TOTP key
//! (ChaCha20-Poly1305, the principal id as associated data).

use crate::error::{Error, Result};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hmac;

/// Length of one step.
pub const TOTP_STEP_SECONDS: u64 = 30;
/// Digits of a code.
pub const TOTP_DIGITS: u32 = 6;
/// Bytes of a secret (160 bits, RFC 4226's recommendation).
pub const TOTP_SECRET_BYTES: usize = 20;
/// Steps before and after the current one a code may be from (clock
/// drift between the authenticator and the control plane).
pub const TOTP_SKEW_STEPS: u64 = 1;
/// Longest code text looked at (longer input is refused unread).
pub const TOTP_CODE_BYTES_MAX: usize = 16;
/// The issuer shown by authenticator apps.
pub const TOTP_ISSUER: &str = "rap";

/// The HOTP value (RFC 4226 §5.3: dynamic truncation) of `secret` at
/// `counter`, `digits` long.
pub fn hotp(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let binary = (u32::from(mac[offset] & 0x7f) << 24)
        | (u32::from(mac[offset + 1]) << 16)
        | (u32::from(mac[offset + 2]) << 8)
        | u32::from(mac[offset + 3]);
    binary % 10u32.pow(digits)
}

/// The step of Unix time `unix_seconds`.
pub fn step_of(unix_seconds: u64) -> u64 {
    unix_seconds / TOTP_STEP_SECONDS
}

/// The code of `secret` at `step`, zero-padded to [`TOTP_DIGITS`].
pub fn code_at(secret: &[u8], step: u64) -> String {
    format!(
        "{:0width$}",
        hotp(secret, step, TOTP_DIGITS),
        width = TOTP_DIGITS as usize
    )
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The step `code` was made for, if it is `secret`'s code for a step
/// within [`TOTP_SKEW_STEPS`] of `now_unix_seconds` and after
/// `last_used_step` (a code is good once). Spaces are ignored.
pub fn verify(
    secret: &[u8],
    code: &str,
    now_unix_seconds: u64,
    last_used_step: Option<u64>,
) -> Option<u64> {
    if code.len() > TOTP_CODE_BYTES_MAX {
        return None;
    }
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    let now = step_of(now_unix_seconds);
    let mut matched = None;
    for step in now.saturating_sub(TOTP_SKEW_STEPS)..=now.saturating_add(TOTP_SKEW_STEPS) {
        // Every candidate is compared, found or not.
        if same(code_at(secret, step).as_bytes(), code.as_bytes()) {
            matched = Some(step);
        }
    }
    matched.filter(|step| last_used_step.is_none_or(|last| *step > last))
}

/// Base32 (RFC 4648, no padding) of `secret`, as authenticator apps take
/// it.
pub fn secret_base32(secret: &[u8]) -> String {
    data_encoding::BASE32_NOPAD.encode(secret)
}

/// The `otpauth://` URI of `secret` for `account` (what a QR code holds).
pub fn otpauth_uri(account: &str, secret: &[u8]) -> String {
    let escape = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    };
    format!(
        "otpauth://totp/{issuer}:{account}?secret={secret}&issuer={issuer}&algorithm=SHA1&digits={TOTP_DIGITS}&period={TOTP_STEP_SECONDS}",
        issuer = escape(TOTP_ISSUER),
        account = escape(account),
        secret = secret_base32(secret),
    )
}

/// Length of the sealing nonce.
const NONCE_BYTES: usize = 12;

fn sealing_key(key: &[u8; 32]) -> Result<LessSafeKey> {
    UnboundKey::new(&aead::CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| Error::Internal("TOTP sealing key".into()))
}

/// `secret` sealed with `key` for `principal_id`: nonce, then ciphertext
/// and tag.
pub fn seal(key: &[u8; 32], principal_id: &str, secret: &[u8]) -> Result<Vec<u8>> {
    let nonce_bytes: [u8; NONCE_BYTES] = crate::secret::random_bytes()?;
    let mut sealed = secret.to_vec();
    sealing_key(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(principal_id.as_bytes()),
            &mut sealed,
        )
        .map_err(|_| Error::Internal("sealing a TOTP secret".into()))?;
    let mut out = nonce_bytes.to_vec();
    out.extend(sealed);
    Ok(out)
}

/// The secret in `sealed` (from [`seal`] with `key` for `principal_id`);
/// anything else (another key, principal or a changed byte) is an error.
pub fn open(key: &[u8; 32], principal_id: &str, sealed: &[u8]) -> Result<Vec<u8>> {
    let refused = || Error::Keys("a TOTP secret does not open with the platform's TOTP key".into());
    if sealed.len() < NONCE_BYTES {
        return Err(refused());
    }
    let (nonce, body) = sealed.split_at(NONCE_BYTES);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| refused())?;
    let mut body = body.to_vec();
    let secret = sealing_key(key)?
        .open_in_place(nonce, Aad::from(principal_id.as_bytes()), &mut body)
        .map_err(|_| refused())?;
    Ok(secret.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 (8 digits), secret "12345678901234567890".
    #[test]
    fn rfc_6238_test_vectors() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59u64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(secret, step_of(time), 8), code, "T = {time}");
        }
        // RFC 4226 appendix D: HOTP with 6 digits, counters 0..=9.
        let hotp_codes = [
            755224, 287082, 359152, 969429, 338314, 254676, 287922, 162583, 399871, 520489,
        ];
        for (counter, code) in hotp_codes.into_iter().enumerate() {
            assert_eq!(hotp(secret, counter as u64, 6), code, "counter {counter}");
        }
    }

    #[test]
    fn a_code_is_good_once_and_only_near_now() {
        let secret = [7u8; TOTP_SECRET_BYTES];
        let now = 1_800_000_000;
        let step = step_of(now);
        let code = code_at(&secret, step);
        assert_eq!(verify(&secret, &code, now, None), Some(step));
        assert_eq!(
            verify(&secret, &format!(" {} ", &code), now, None),
            Some(step)
        );
        // Once used, not again; an older step is not good either.
        assert_eq!(verify(&secret, &code, now, Some(step)), None);
        // One step of drift either way, not two.
        assert_eq!(
            verify(&secret, &code, now + TOTP_STEP_SECONDS, None),
            Some(step)
        );
        assert_eq!(
            verify(&secret, &code, now - TOTP_STEP_SECONDS, None),
            Some(step)
        );
        assert_eq!(
            verify(&secret, &code, now + 2 * TOTP_STEP_SECONDS, None),
            None
        );
        assert_eq!(
            verify(&secret, "000000", now, None).is_some(),
            code == "000000"
        );
        assert_eq!(verify(&secret, &"1".repeat(100), now, None), None);
        assert_eq!(verify(&[8u8; TOTP_SECRET_BYTES], &code, now, None), None);
    }

    #[test]
    fn sealed_secrets_open_only_for_their_principal_and_key() {
        let key = [1u8; 32];
        let secret = [9u8; TOTP_SECRET_BYTES];
        let sealed = seal(&key, "p-1", &secret).unwrap();
        assert_eq!(open(&key, "p-1", &sealed).unwrap(), secret);
        assert!(open(&key, "p-2", &sealed).is_err());
        assert!(open(&[2u8; 32], "p-1", &sealed).is_err());
        let mut changed = sealed.clone();
        changed[NONCE_BYTES] ^= 1;
        assert!(open(&key, "p-1", &changed).is_err());
        assert_ne!(seal(&key, "p-1", &secret).unwrap(), sealed, "fresh nonce");
    }

    #[test]
    fn otpauth_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("ops person", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/rap:ops%20person?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=rap&algorithm=SHA1&digits=6&period=30"
        );
    }
}
