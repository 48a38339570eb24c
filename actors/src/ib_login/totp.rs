//! The TOTP second factor (RFC 6238: HMAC-SHA1, 6 digits, 30 s steps, as IB's "Mobile
//! Authenticator App" uses and ibeam's pyotp handler generates), from a base32 secret kept
//! in a file.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use totp_rs::{Algorithm, Builder, Secret, Totp};

use super::LoginError;

/// A code generator for one secret. The secret never leaves this struct (no `Debug`).
pub struct TotpCode {
    totp: Totp,
}

impl TotpCode {
    /// Reads a base32 secret (spaces, dashes and lower case as authenticator apps show it).
    pub fn from_file(path: &Path) -> Result<Self, LoginError> {
        let text = super::read_secret(path)?;
        Self::from_base32(&text).map_err(|message| LoginError::Secret {
            path: path.display().to_string(),
            message,
        })
    }

    pub fn from_base32(secret: &str) -> Result<Self, String> {
        let cleaned: String = secret
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_uppercase())
            .collect();
        let cleaned = cleaned.trim_end_matches('=');
        let secret = Secret::try_from_base32(cleaned)
            .map_err(|_| "the TOTP secret is not base32 (RFC 4648)".to_string())?;
        Self::from_bytes(secret.as_bytes(), 6)
    }

    /// Raw key bytes. Secrets shorter than RFC 4226's recommended 128 bits exist in the wild
    /// (80-bit authenticator keys), so only an empty key is refused.
    pub fn from_bytes(key: &[u8], digits: u8) -> Result<Self, String> {
        if key.is_empty() {
            return Err("the TOTP secret is empty".into());
        }
        let totp = Builder::new()
            .with_algorithm(Algorithm::SHA1)
            .with_digits(digits)
            .with_step_duration(30)
            .with_secret(Secret::new(key.to_vec().into_boxed_slice()))
            .build_noncompliant();
        Ok(Self { totp })
    }

    /// The code for Unix time `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.totp.generate(unix_secs).to_string()
    }

    /// How long to wait before generating a code, so that it is still valid when IB checks
    /// it: ibeam's pyotp handler waits for a fresh period when fewer than 8 s remain.
    pub fn wait_before_code(unix_secs: u64) -> Duration {
        let left = 30 - unix_secs % 30;
        if left < FRESH_MARGIN_SECS {
            Duration::from_secs(left)
        } else {
            Duration::ZERO
        }
    }

    /// The code now, after waiting out the end of a period.
    pub async fn fresh_code(&self) -> String {
        let wait = Self::wait_before_code(unix_now());
        if !wait.is_zero() {
            tokio::time::sleep(wait + Duration::from_millis(200)).await;
        }
        self.code_at(unix_now())
    }
}

/// ibeam `two_fa_handlers/pyotp_handler.py`: `IBEAM_PYOTP_EXPIRY_BUFFER_SECONDS` = 8.
const FRESH_MARGIN_SECS: u64 = 8;

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 rows: key "12345678901234567890", 8 digits.
    #[test]
    fn rfc6238_sha1_test_vectors() {
        let t = TotpCode::from_bytes(b"12345678901234567890", 8).unwrap();
        for (time, code) in [
            (59, "94287082"),
            (1_111_111_109, "07081804"),
            (1_111_111_111, "14050471"),
            (1_234_567_890, "89005924"),
            (2_000_000_000, "69279037"),
            (20_000_000_000, "65353130"),
        ] {
            assert_eq!(t.code_at(time), code, "T = {time}");
        }
    }

    /// The same key as an authenticator app shows it (base32, grouped, lower case), 6 digits:
    /// the last six digits of the RFC's 8-digit codes.
    #[test]
    fn base32_secret_as_apps_show_it() {
        // base32("12345678901234567890")
        let t = TotpCode::from_base32("gezd gnbv gy3t qojq gezd gnbv gy3t qojq\n").unwrap();
        assert_eq!(t.code_at(59), "287082");
        assert_eq!(t.code_at(1_111_111_109), "081804");
        assert!(TotpCode::from_base32("not base32 !").is_err());
        assert!(TotpCode::from_base32("  ").is_err());
    }

    #[test]
    fn waits_for_a_fresh_period_near_the_end_of_one() {
        assert_eq!(TotpCode::wait_before_code(60), Duration::ZERO);
        assert_eq!(TotpCode::wait_before_code(81), Duration::ZERO);
        assert_eq!(TotpCode::wait_before_code(83), Duration::from_secs(7));
        assert_eq!(TotpCode::wait_before_code(89), Duration::from_secs(1));
    }
}
