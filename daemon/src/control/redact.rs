//! Secrets never reach a log: the effective config is logged at start with every secret-looking
//! key replaced, and config errors never echo a value of such a key.

use serde::Serialize;
use serde_json::Value;

pub const REDACTED: &str = "[redacted]";

/// Keys whose values are secrets wherever they appear.
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "cookie",
        "token",
        "credential",
        "private_key",
        "api_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn scrub(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) && !matches!(v, Value::Null) {
                    *v = Value::String(REDACTED.into());
                } else {
                    scrub(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub),
        Value::String(s) => {
            if let Some(clean) = strip_url_userinfo(s) {
                *s = clean;
            }
        }
        _ => {}
    }
}

/// `scheme://user:pass@host…` → `scheme://[redacted]@host…`.
pub fn strip_url_userinfo(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end].rfind('@')?;
    Some(format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]))
}

/// The value as JSON with every secret replaced by `[redacted]`.
pub fn redacted(value: &impl Serialize) -> Value {
    let mut v = serde_json::to_value(value).unwrap_or(Value::Null);
    scrub(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_replaced_everywhere() {
        let v = serde_json::json!({
            "clickhouse": {"user": "writer", "password": "hunter2"},
            "cluster": {"cookie": "c00kie"},
            "redis": {"url": "redis://ml:pw@redis:6379/0"},
            "ib": {"users": [{"name": "u1", "api_token": "t"}]},
            "empty": {"password": null}
        });
        let text = redacted(&v).to_string();
        for secret in ["hunter2", "c00kie", "ml:pw", "\"t\""] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        assert!(text.contains("\"user\":\"writer\""), "{text}");
        assert!(text.contains("redis://[redacted]@redis:6379/0"), "{text}");
    }
}
