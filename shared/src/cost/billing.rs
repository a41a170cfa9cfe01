//! What AWS actually charged: the billing source port, the bill of one UTC day, exact decimal
//! amounts and the usage types that name a model.
//!
//! The ledger is exact against the product's own price list; only the bill says whether that
//! list (or the ledger) drifted from what AWS charges (docs/architecture.md, "Money"). Billed
//! amounts arrive as decimal strings and are turned into integer nano-USD digit by digit, never
//! through a float.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;

#[cfg(feature = "billing")]
pub mod cost_explorer;

/// The label of the billed cost no model could be named for, and of the ledger's spend on
/// models the catalog does not know.
pub const OTHER: &str = "other";

/// The billed Bedrock cost of one UTC day, in nano-USD (signed: credits and refunds are
/// negative).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DailyBill {
    pub day: NaiveDate,
    /// By model (the catalog's base model id), for the usage types that name one.
    pub by_model: BTreeMap<String, i64>,
    /// Usage types that name no known model, summed.
    pub other_nano: i64,
}

impl DailyBill {
    pub fn total_nano(&self) -> i64 {
        self.by_model
            .values()
            .fold(self.other_nano, |sum, v| sum.saturating_add(*v))
    }

    /// Adds `nano` to the model a usage type names, or to [`OTHER`].
    pub fn add(&mut self, model: Option<&str>, nano: i64) {
        match model {
            Some(model) => {
                let cost = self.by_model.entry(model.to_owned()).or_default();
                *cost = cost.saturating_add(nano);
            }
            None => self.other_nano = self.other_nano.saturating_add(nano),
        }
    }
}

/// Why the bill could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BillingError {
    /// The service refused or could not be reached (permissions, throttling, network).
    #[error("billing data unavailable: {0}")]
    Unavailable(String),
    /// An answer that cannot be read as a bill (an amount that is no number, another currency).
    #[error("malformed billing data: {0}")]
    Malformed(String),
}

/// Bedrock cost per UTC day, and per model where the usage types allow.
#[async_trait]
pub trait BillingSource: Send + Sync + std::fmt::Debug {
    /// The bill of every day in `[from, to)` that has billing data, in day order. A day without
    /// any is left out: it is not billed yet.
    async fn daily_bills(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyBill>, BillingError>;
}

/// A decimal amount of US dollars (`"12.5"`, `"-0.0000071"`, `"1.5E-7"`) as nano-USD, exactly:
/// digits past the ninth decimal round half away from zero, once.
pub fn usd_to_nano(text: &str) -> Result<i64, BillingError> {
    let malformed = || BillingError::Malformed(format!("{text:?} is not a decimal amount"));
    let trimmed = text.trim();
    let (negative, unsigned) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(at) => (
            &unsigned[..at],
            unsigned[at + 1..].parse::<i32>().map_err(|_| malformed())?,
        ),
        None => (unsigned, 0),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed());
    }
    // The value is `digits` × 10^(exponent − decimals); nano-USD shift that by nine places.
    let decimals = i32::try_from(fraction.len()).map_err(|_| malformed())?;
    let shift = exponent
        .checked_add(9)
        .and_then(|s| s.checked_sub(decimals))
        .ok_or_else(malformed)?;
    let magnitude = shifted(&digits, shift).ok_or_else(|| {
        BillingError::Malformed(format!("{text:?} is too large an amount of dollars"))
    })?;
    let nano = i64::try_from(magnitude).map_err(|_| {
        BillingError::Malformed(format!("{text:?} is too large an amount of dollars"))
    })?;
    Ok(if negative { -nano } else { nano })
}

/// `digits` × 10^`shift` as an integer, rounded half away from zero when `shift` drops digits;
/// `None` when it does not fit.
fn shifted(digits: &str, shift: i32) -> Option<u128> {
    let digits = digits.trim_start_matches('0');
    if shift >= 0 {
        if digits.is_empty() {
            return Some(0);
        }
        let scale = 10_u128.checked_pow(u32::try_from(shift).ok()?)?;
        return digits.parse::<u128>().ok()?.checked_mul(scale);
    }
    let dropped = usize::try_from(shift.unsigned_abs()).ok()?;
    if dropped > digits.len() {
        return Some(0);
    }
    let (kept, rest) = digits.split_at(digits.len() - dropped);
    let kept = if kept.is_empty() {
        0
    } else {
        kept.parse::<u128>().ok()?
    };
    let round_up = rest.as_bytes().first().is_some_and(|d| *d >= b'5');
    kept.checked_add(u128::from(round_up))
}

/// Which model a usage type names, and which catalog models count as one model on the bill.
///
/// Usage types name a model in words (`USE1-Claude3Haiku-input-tokens`), not by id, and a
/// model's inference profiles (`us.`, `global.`) are billed as the model itself. So both sides
/// are reduced to the model's name without punctuation or geography (`claude3haiku`), and a bill
/// row is the catalog's base model id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModelMap {
    /// Normalized model name to base model id; names two base models share are left out.
    pub(crate) by_name: BTreeMap<String, String>,
    /// Every catalog model id to its base model id.
    pub(crate) bases: BTreeMap<String, String>,
}

impl ModelMap {
    /// The base model id a usage type names, if it names a known model.
    pub fn model_of_usage_type(&self, usage_type: &str) -> Option<&str> {
        self.by_name
            .get(&usage_type_model(usage_type)?)
            .map(String::as_str)
    }

    /// Every catalog model id with the base model id it is billed as.
    pub fn models(&self) -> impl Iterator<Item = (&str, &str)> {
        self.bases
            .iter()
            .map(|(id, base)| (id.as_str(), base.as_str()))
    }
}

/// Lowercase letters and digits only: `Claude 3.5 Sonnet v2` and `Claude3.5Sonnet-V2` meet.
fn normalize(text: &str) -> String {
    text.chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// A catalog name without its geography suffix: `Claude Sonnet 4.5 (US)` is `claudesonnet45`.
pub(crate) fn catalog_name(name: &str) -> String {
    let bare = match name.rfind(" (") {
        Some(at) if name.ends_with(')') => &name[..at],
        _ => name,
    };
    normalize(bare)
}

/// Words that end the model part of a usage type: what is metered, not which model.
const METER_WORDS: &[&str] = &[
    "input",
    "output",
    "cache",
    "tokens",
    "token",
    "batch",
    "images",
    "image",
    "provisioned",
    "requests",
    "request",
    "units",
    "unit",
    "storage",
    "customization",
    "inference",
    "video",
    "seconds",
];

/// The normalized model part of a usage type: its region prefix (`USE1`, `EUC1`) and trailing
/// meter words dropped; `None` when nothing is left.
fn usage_type_model(usage_type: &str) -> Option<String> {
    let mut parts = usage_type.split('-').peekable();
    // One region prefix at most, so a model named like a region code stays a model.
    let _region = parts.next_if(|part| is_region_code(part));
    let parts: Vec<&str> = parts
        .take_while(|part| !METER_WORDS.contains(&part.to_ascii_lowercase().as_str()))
        .collect();
    let name = normalize(&parts.concat());
    (!name.is_empty()).then_some(name)
}

/// `USE1`, `USW2`, `EUC1`, `APN1`: a few capitals and a number, as AWS abbreviates regions.
fn is_region_code(part: &str) -> bool {
    let letters = part.bytes().take_while(u8::is_ascii_uppercase).count();
    let digits = &part[letters..];
    (2..=4).contains(&letters) && !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// A billing source with bills set by hand, counting the requests it answers.
#[cfg(any(test, feature = "test-support"))]
#[derive(Debug, Default)]
pub struct FixedBilling {
    bills: std::sync::Mutex<BTreeMap<NaiveDate, DailyBill>>,
    failure: std::sync::Mutex<Option<BillingError>>,
    requests: std::sync::atomic::AtomicUsize,
}

#[cfg(any(test, feature = "test-support"))]
impl FixedBilling {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) the bill of its day.
    pub fn set(&self, bill: DailyBill) {
        self.bills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bill.day, bill);
    }

    /// Every request fails with `error` from now on; `None` heals it.
    pub fn fail_with(&self, error: Option<BillingError>) {
        *self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = error;
    }

    /// Requests answered so far, failed ones included.
    pub fn requests(&self) -> usize {
        self.requests.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(any(test, feature = "test-support"))]
#[async_trait]
impl BillingSource for FixedBilling {
    async fn daily_bills(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<DailyBill>, BillingError> {
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        if let Some(error) = self
            .failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
        {
            return Err(error);
        }
        let bills = self
            .bills
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Ok(bills
            .range(from..to)
            .map(|(_, bill)| bill.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests;
