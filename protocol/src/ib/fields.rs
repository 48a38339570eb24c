//! The fields of a market-data frame, typed for the hot path. IB sends every value as a short
//! string ("189.60", "1,200", "RpB") or, rarely, a number; keys are field ids ("31", "7059").
//! Both fit inline in a [`CompactString`] (24 bytes), so a parsed frame costs one vector, not a
//! String per key and per value as a `BTreeMap<String, Value>` did, and the replay store's
//! merges copy without allocating. Iteration is in key order, as the map's was, so quarantine
//! records keep their bytes.

use std::fmt;

use compact_str::CompactString;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::{Number, Value};

/// One field value as IB sent it.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Str(CompactString),
    Num(Number),
    /// `null`, a boolean, an array or an object: not market data, kept as sent.
    Other(Box<Value>),
}

impl FieldValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Num(n) => n.as_i64(),
            Self::Str(s) => s.parse().ok(),
            Self::Other(_) => None,
        }
    }

    /// The value as a `serde_json::Value` (off the hot path: system and status frames).
    pub fn to_value(&self) -> Value {
        match self {
            Self::Str(s) => Value::String(s.to_string()),
            Self::Num(n) => Value::Number(n.clone()),
            Self::Other(v) => (**v).clone(),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Self::Other(v) => *v,
            other => other.to_value(),
        }
    }
}

/// Its JSON text, as `serde_json::Value`'s `Display` writes it (error messages quote it).
impl fmt::Display for FieldValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Str(s) => {
                f.write_str(&serde_json::to_string(s.as_str()).map_err(|_| fmt::Error)?)
            }
            Self::Num(n) => fmt::Display::fmt(n, f),
            Self::Other(v) => fmt::Display::fmt(v, f),
        }
    }
}

impl From<Value> for FieldValue {
    fn from(v: Value) -> Self {
        match v {
            Value::String(s) => Self::Str(s.into()),
            Value::Number(n) => Self::Num(n),
            other => Self::Other(Box::new(other)),
        }
    }
}

impl PartialEq<Value> for FieldValue {
    fn eq(&self, other: &Value) -> bool {
        match (self, other) {
            (Self::Str(a), Value::String(b)) => a == b,
            (Self::Num(a), Value::Number(b)) => a == b,
            (Self::Other(a), b) => **a == *b,
            _ => false,
        }
    }
}

impl Serialize for FieldValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Str(v) => s.serialize_str(v),
            Self::Num(n) => n.serialize(s),
            Self::Other(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for FieldValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(FieldValueVisitor)
    }
}

struct FieldValueVisitor;

impl<'de> Visitor<'de> for FieldValueVisitor {
    type Value = FieldValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<FieldValue, E> {
        Ok(FieldValue::Str(v.into()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<FieldValue, E> {
        Ok(FieldValue::Str(v.into()))
    }

    // Numbers become what `serde_json::Value` makes of them, so they print the same.
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<FieldValue, E> {
        Ok(FieldValue::Num(v.into()))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<FieldValue, E> {
        Ok(FieldValue::Num(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<FieldValue, E> {
        Ok(Number::from_f64(v).map_or(FieldValue::Other(Box::new(Value::Null)), FieldValue::Num))
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<FieldValue, E> {
        Ok(FieldValue::Other(Box::new(Value::Bool(v))))
    }

    fn visit_unit<E: de::Error>(self) -> Result<FieldValue, E> {
        Ok(FieldValue::Other(Box::new(Value::Null)))
    }

    fn visit_none<E: de::Error>(self) -> Result<FieldValue, E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<FieldValue, A::Error> {
        let v = Value::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
        Ok(FieldValue::Other(Box::new(v)))
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<FieldValue, A::Error> {
        let v = Value::deserialize(de::value::MapAccessDeserializer::new(map))?;
        Ok(FieldValue::Other(Box::new(v)))
    }
}

/// A frame's fields: key → value, sorted by key, one entry per key (a repeated key keeps its
/// last value, as a JSON object parsed into a map does).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Fields(Vec<(CompactString, FieldValue)>);

impl Fields {
    pub fn new() -> Self {
        Self::default()
    }

    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Sets `key`, returning the value it replaced.
    pub fn insert(
        &mut self,
        key: impl Into<CompactString>,
        value: FieldValue,
    ) -> Option<FieldValue> {
        let key = key.into();
        match self.find(&key) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&str> for Fields {
    type Output = FieldValue;

    fn index(&self, key: &str) -> &FieldValue {
        self.get(key)
            .unwrap_or_else(|| panic!("no field {key} in the frame"))
    }
}

impl<K: Into<CompactString>, V: Into<FieldValue>> FromIterator<(K, V)> for Fields {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut f = Fields::new();
        for (k, v) in iter {
            f.insert(k, v.into());
        }
        f
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k.as_str(), v)?;
        }
        m.end()
    }
}

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(FieldsVisitor)
    }
}

struct FieldsVisitor;

impl<'de> Visitor<'de> for FieldsVisitor {
    type Value = Fields;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
        // IB's frames come with sorted keys more often than not: appending is then the whole
        // cost; anything else goes through the sorted insert.
        let mut out: Vec<(CompactString, FieldValue)> =
            Vec::with_capacity(map.size_hint().unwrap_or(16));
        let mut fields = Fields::new();
        let mut sorted = true;
        while let Some(k) = map.next_key::<CompactString>()? {
            let v: FieldValue = map.next_value()?;
            if sorted {
                match out.last() {
                    Some((last, _)) if k.as_str() <= last.as_str() => {
                        sorted = false;
                        fields.0 = std::mem::take(&mut out);
                        fields.insert(k, v);
                    }
                    _ => out.push((k, v)),
                }
            } else {
                fields.insert(k, v);
            }
        }
        if sorted {
            fields.0 = out;
        }
        Ok(fields)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    /// Whatever the key order, duplicates and value kinds, the fields hold and print what a
    /// `BTreeMap<String, Value>` of the same text holds and prints.
    #[test]
    fn fields_agree_with_a_sorted_map() {
        let cases = [
            r#"{"31":"189.60","6119":"q2","6509":"RpB","84":"189.56","_updated":1712596911593}"#,
            r#"{"topic":"smd+1","86":"1","31":"2","31":"3","7059":"","x":null,"y":[1,{"a":2}]}"#,
            r#"{"b":true,"a":-1.5e3,"c":18446744073709551615,"d":"\u00e9\"q\"","a":7}"#,
            r#"{}"#,
            r#"{"a-very-long-key-that-does-not-fit-inline":"and a value that does not either"}"#,
        ];
        for text in cases {
            let fields: Fields = serde_json::from_str(text).unwrap();
            let map: BTreeMap<String, Value> = serde_json::from_str(text).unwrap();
            assert_eq!(fields.len(), map.len(), "{text}");
            for ((fk, fv), (mk, mv)) in fields.iter().zip(&map) {
                assert_eq!(fk, mk, "{text}");
                assert!(*fv == *mv, "{text}: {fv:?} vs {mv:?}");
                assert_eq!(fv.to_string(), mv.to_string(), "{text}");
            }
            assert_eq!(
                serde_json::to_string(&fields).unwrap(),
                serde_json::to_string(&map).unwrap(),
                "{text}"
            );
        }
    }

    #[test]
    fn insert_get_remove_keep_the_order() {
        let mut f = Fields::new();
        for k in ["86", "31", "7059", "31"] {
            f.insert(k, FieldValue::Str(k.into()));
        }
        let keys: Vec<&str> = f.iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["31", "7059", "86"]);
        assert_eq!(f.get("7059").and_then(FieldValue::as_str), Some("7059"));
        assert_eq!(f.remove("31"), Some(FieldValue::Str("31".into())));
        assert!(!f.contains_key("31") && f.len() == 2);
    }
}
