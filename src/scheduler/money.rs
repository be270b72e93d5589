//! Exact money arithmetic: splitting a total by weights so the parts sum to it exactly.
//!
//! Amounts are `rust_decimal::Decimal` in a currency with cents. The total is split in integer
//! cents by the largest-remainder (Hamilton) method: each part gets the floor of its exact
//! share, and the cents left over go one each to the largest remainders (ties to the earlier
//! part). The parts always sum to the total, and no part is more than one cent from its exact
//! share.

use rust_decimal::Decimal;

/// Decimal places of the currency's minor unit (cents).
pub const MINOR_UNIT_SCALE: u32 = 2;
/// Most parts one allocation may have.
pub const PARTS_MAX: usize = 10_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocationError {
    #[error("total {0} has fractions of a cent")]
    SubCentTotal(Decimal),
    #[error("weights must be 1..={PARTS_MAX} in number")]
    PartCount,
    #[error("weight {0} is negative")]
    NegativeWeight(Decimal),
    #[error("weights sum to zero")]
    ZeroWeights,
    #[error("amounts too large to allocate exactly")]
    Overflow,
}

/// Splits `total` by `weights` into parts (in cents) that sum exactly to `total`.
pub fn allocate(total: Decimal, weights: &[Decimal]) -> Result<Vec<Decimal>, AllocationError> {
    if weights.is_empty() || weights.len() > PARTS_MAX {
        return Err(AllocationError::PartCount);
    }
    if let Some(w) = weights.iter().find(|w| w.is_sign_negative() && !w.is_zero()) {
        return Err(AllocationError::NegativeWeight(*w));
    }
    if total.normalize().scale() > MINOR_UNIT_SCALE {
        return Err(AllocationError::SubCentTotal(total));
    }
    // Integer cents, and weights scaled to integers with a common exponent.
    let cents = to_integer(total, MINOR_UNIT_SCALE)?;
    let scale = weights.iter().map(|w| w.normalize().scale()).max().unwrap_or(0);
    let ints = weights.iter().map(|w| to_integer(*w, scale)).collect::<Result<Vec<i128>, _>>()?;
    let sum = ints
        .iter()
        .try_fold(0i128, |acc, w| acc.checked_add(*w))
        .ok_or(AllocationError::Overflow)?;
    if sum == 0 {
        return Err(AllocationError::ZeroWeights);
    }
    let magnitude = cents.checked_abs().ok_or(AllocationError::Overflow)?;
    let mut parts = Vec::with_capacity(ints.len());
    let mut remainders = Vec::with_capacity(ints.len());
    for (i, w) in ints.iter().enumerate() {
        let product = magnitude.checked_mul(*w).ok_or(AllocationError::Overflow)?;
        parts.push(product / sum);
        remainders.push((product % sum, i));
    }
    let assigned: i128 = parts.iter().sum();
    let mut leftover = magnitude - assigned;
    // Largest remainder first; equal remainders go to the earlier part.
    remainders.sort_by(|(ra, ia), (rb, ib)| rb.cmp(ra).then(ia.cmp(ib)));
    for (_, i) in remainders {
        if leftover == 0 {
            break;
        }
        parts[i] += 1;
        leftover -= 1;
    }
    let sign = if cents < 0 { -1 } else { 1 };
    parts
        .into_iter()
        .map(|p| {
            let signed = p.checked_mul(sign).ok_or(AllocationError::Overflow)?;
            Decimal::try_from_i128_with_scale(signed, MINOR_UNIT_SCALE)
                .map_err(|_| AllocationError::Overflow)
        })
        .collect()
}

/// `value × 10^scale` as an exact integer (the value has at most `scale` decimals).
fn to_integer(value: Decimal, scale: u32) -> Result<i128, AllocationError> {
    let mut v = value;
    v.rescale(scale);
    if v != value {
        return Err(AllocationError::Overflow);
    }
    Ok(v.mantissa())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    /// Thirds of a cent-exact total go to the earliest parts and sum exactly.
    #[test]
    fn thirds_sum_exactly() {
        let parts = allocate(d("10000.00"), &[d("1"), d("1"), d("1")]).expect("allocates");
        assert_eq!(parts, vec![d("3333.34"), d("3333.33"), d("3333.33")]);
    }

    /// Negative totals (credits) split symmetrically.
    #[test]
    fn credits_split_like_charges() {
        let parts = allocate(d("-0.10"), &[d("1"), d("1"), d("1")]).expect("allocates");
        assert_eq!(parts, vec![d("-0.04"), d("-0.03"), d("-0.03")]);
    }

    /// Bad inputs are errors, never rounded.
    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(allocate(d("1.005"), &[d("1")]), Err(AllocationError::SubCentTotal(d("1.005"))));
        assert_eq!(allocate(d("1"), &[]), Err(AllocationError::PartCount));
        assert_eq!(allocate(d("1"), &[d("0"), d("0")]), Err(AllocationError::ZeroWeights));
        assert_eq!(
            allocate(d("1"), &[d("-1"), d("2")]),
            Err(AllocationError::NegativeWeight(d("-1")))
        );
    }
}
