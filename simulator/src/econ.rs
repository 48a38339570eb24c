//! An economic release feed (the second source of the platform: numeric economic data), served
//! at `GET /econ/releases` in the style of the EIA weekly petroleum status report: a release
//! every [`RELEASE_EVERY_MS`] of sim time, the last [`KEPT`] of them in every answer (so a
//! poller sees each release several times and must deduplicate), values as strings with
//! thousands separators as such feeds publish them.
//!
//! The feed is a pure function of the seed and the sim clock: no state, the same answer for
//! the same time.

use serde_json::{Value, json};

/// Sim time between two releases (a weekly report, compressed for a demo).
pub const RELEASE_EVERY_MS: i64 = 10_000;
/// Releases kept in the feed.
pub const KEPT: i64 = 5;

const PUBLISHER: &str = "EIA";
const RELEASE: &str = "EIA-weekly-petroleum-status-report";

/// (field, unit, base value, relative spread, decimals)
const FIELDS: &[(&str, &str, f64, f64, usize)] = &[
    ("Crude-Oil Stocks", "1000_barrels", 430_000.0, 0.02, 0),
    ("Gasoline Stocks", "1000_barrels", 225_000.0, 0.03, 0),
    ("Distillate Stocks", "1000_barrels", 118_000.0, 0.03, 0),
    ("Refinery Utilization", "1_percent", 90.0, 0.04, 1),
    (
        "Crude-Oil Imports",
        "1000_barrels_per_day",
        6_500.0,
        0.08,
        0,
    ),
];

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// `1234567.8` → `"1,234,567.8"`.
fn with_commas(value: f64, decimals: usize) -> String {
    let text = format!("{value:.decimals$}");
    let (int, frac) = text
        .split_once('.')
        .map_or((text.as_str(), None), |(i, f)| (i, Some(f)));
    let mut out = String::new();
    for (i, c) in int.chars().enumerate() {
        if i > 0 && (int.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if let Some(f) = frac {
        out.push('.');
        out.push_str(f);
    }
    out
}

/// The feed as of `now_ms` (sim time).
pub fn releases_at(seed: u64, now_ms: i64) -> Value {
    let latest = now_ms.div_euclid(RELEASE_EVERY_MS);
    let releases: Vec<Value> = (0..KEPT)
        .map(|j| latest - j)
        .map(|k| {
            let fields: Vec<Value> = FIELDS
                .iter()
                .enumerate()
                .map(|(i, (name, unit, base, spread, decimals))| {
                    let h = splitmix(seed ^ splitmix(k as u64) ^ (i as u64).wrapping_mul(0x51));
                    let u = (h >> 11) as f64 / (1u64 << 53) as f64;
                    let value = base * (1.0 + spread * (2.0 * u - 1.0));
                    json!({"field": name, "value": with_commas(value, *decimals), "unit": unit})
                })
                .collect();
            json!({
                "publisher": PUBLISHER,
                "release": RELEASE,
                "release_time_ms": k * RELEASE_EVERY_MS,
                "fields": fields,
            })
        })
        .collect();
    json!({ "releases": releases })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_is_deterministic_and_keeps_the_last_releases() {
        let a = releases_at(7, 123_456);
        assert_eq!(a, releases_at(7, 123_456));
        let r = a["releases"].as_array().unwrap();
        assert_eq!(r.len() as i64, KEPT);
        assert_eq!(r[0]["release_time_ms"], 120_000);
        assert_eq!(r[1]["release_time_ms"], 110_000);
        assert_eq!(r[0]["fields"].as_array().unwrap().len(), FIELDS.len());
        // The same release keeps its values in a later answer.
        let later = releases_at(7, 133_000);
        assert_eq!(later["releases"][1], r[0]);
        assert_ne!(releases_at(8, 123_456), a);
    }

    #[test]
    fn thousands_separators() {
        assert_eq!(with_commas(430_112.0, 0), "430,112");
        assert_eq!(with_commas(90.3, 1), "90.3");
        assert_eq!(with_commas(1_234_567.5, 1), "1,234,567.5");
        assert_eq!(with_commas(999.0, 0), "999");
    }
}
