//! Safety numbers: a fingerprint of two identities for out-of-band comparison.
//!
//! Modelled on Signal's numeric fingerprints: each identity gets 30 digits from an iterated hash
//! of (version, user id, identity keys); the two halves are sorted so both people see the same 60
//! digits, shown as 12 groups of 5.

use core::fmt;

use super::keys::IdentityPublic;

/// Version of the fingerprint construction, hashed in so a future change cannot collide.
pub const SAFETY_NUMBER_VERSION: u16 = 1;
/// Hash iterations per identity. Signal uses 5,200 iterations of SHA-512 to make grinding a
/// colliding identity costlier; BLAKE3 is faster per call, so this is a floor, not a match.
pub const SAFETY_NUMBER_ITERATIONS: u32 = 5_200;
/// Derivation context of the fingerprint hash.
pub(crate) const SAFETY_NUMBER_CONTEXT: &str = "Paloma 2026-11-22 safety number v1";
/// Digits per identity.
const HALF_DIGITS: usize = 30;

/// 60 decimal digits identifying a pair of identities, independent of their order.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SafetyNumber {
    digits: [u8; 2 * HALF_DIGITS],
}

impl SafetyNumber {
    /// The safety number of `a` and `b`; `of(a, b) == of(b, a)`.
    pub fn of(a: &IdentityPublic, b: &IdentityPublic) -> Self {
        let mut halves = [half(a), half(b)];
        halves.sort();
        let mut digits = [0u8; 2 * HALF_DIGITS];
        digits[..HALF_DIGITS].copy_from_slice(&halves[0]);
        digits[HALF_DIGITS..].copy_from_slice(&halves[1]);
        Self { digits }
    }

    /// The 60 digits as ASCII, no separators.
    pub fn digits(&self) -> &str {
        // Only ASCII digits are ever stored.
        core::str::from_utf8(&self.digits).expect("safety number digits are ASCII")
    }

    /// The 12 groups of 5 digits people read aloud.
    pub fn groups(&self) -> [&str; 12] {
        let digits = self.digits();
        core::array::from_fn(|i| &digits[5 * i..5 * i + 5])
    }
}

impl fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, group) in self.groups().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            f.write_str(group)?;
        }
        Ok(())
    }
}

impl fmt::Debug for SafetyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SafetyNumber({self})")
    }
}

/// 30 ASCII digits for one identity: h_0 = H(version ‖ user id ‖ keys), h_{i+1} = H(h_i ‖ keys);
/// then six 5-byte big-endian chunks, each mod 100,000.
fn half(identity: &IdentityPublic) -> [u8; HALF_DIGITS] {
    let keys = [identity.signing_key, identity.dh_key].concat();
    let mut hasher = blake3::Hasher::new_derive_key(SAFETY_NUMBER_CONTEXT);
    hasher.update(&SAFETY_NUMBER_VERSION.to_be_bytes());
    hasher.update(&identity.user_id().0);
    hasher.update(&keys);
    let mut hash = *hasher.finalize().as_bytes();
    for _ in 1..SAFETY_NUMBER_ITERATIONS {
        let mut hasher = blake3::Hasher::new_derive_key(SAFETY_NUMBER_CONTEXT);
        hasher.update(&hash);
        hasher.update(&keys);
        hash = *hasher.finalize().as_bytes();
    }
    let mut out = [0u8; HALF_DIGITS];
    for (chunk, digits) in hash[..30].chunks_exact(5).zip(out.chunks_exact_mut(5)) {
        let mut value = chunk
            .iter()
            .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
            % 100_000;
        for digit in digits.iter_mut().rev() {
            *digit = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(seed: u8) -> IdentityPublic {
        IdentityPublic {
            signing_key: [seed; 32],
            dh_key: [seed.wrapping_add(1); 32],
        }
    }

    #[test]
    fn order_independent_and_sensitive_to_every_key() {
        let a = identity(1);
        let b = identity(2);
        let n = SafetyNumber::of(&a, &b);
        assert_eq!(n, SafetyNumber::of(&b, &a));
        assert_eq!(n.digits().len(), 60);
        assert!(n.digits().bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(n.to_string().split(' ').count(), 12);
        let mut a2 = a;
        a2.dh_key[31] ^= 1;
        assert_ne!(n, SafetyNumber::of(&a2, &b));
        let mut b2 = b;
        b2.signing_key[0] ^= 1;
        assert_ne!(n, SafetyNumber::of(&a, &b2));
    }
}
