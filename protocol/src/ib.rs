//! Interactive Brokers Client Portal Web API wire types (REST session endpoints, websocket
//! frames, market-data field ids) and the parsers for IB's value quirks.
//!
//! Reference: `shared/reference/ib-client-portal.md`. Parsing is tolerant where the reference
//! marks a shape unknown or observed to vary: missing keys default, extra keys are ignored.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

mod fields;
pub use fields::{FieldValue, Fields};

/// Market-data field ids of `smd` (all sent as strings, except 83 which can be a number).
pub mod field {
    pub const LAST: &str = "31";
    pub const SYMBOL: &str = "55";
    pub const HIGH: &str = "70";
    pub const LOW: &str = "71";
    pub const CHANGE: &str = "82";
    pub const CHANGE_PCT: &str = "83";
    pub const BID: &str = "84";
    pub const ASK_SIZE: &str = "85";
    pub const ASK: &str = "86";
    pub const VOLUME_ABBREV: &str = "87";
    pub const BID_SIZE: &str = "88";
    pub const AVAILABILITY: &str = "6509";
    pub const LAST_SIZE: &str = "7059";
    pub const OPEN: &str = "7295";
    pub const CLOSE: &str = "7296";
    pub const MARK: &str = "7635";
    pub const CHANGE_SINCE_OPEN: &str = "7682";
    pub const PRIOR_CLOSE: &str = "7741";
    pub const VOLUME: &str = "7762";
    pub const OPEN_INTEREST: &str = "7697";
}

/// Field 6509, market-data availability: the first character says how the data is delivered
/// (`R` real-time, `D` delayed, `Z` frozen, `Y` frozen-delayed, `N` not subscribed), the others
/// what else is available (`P` snapshot, `p` consolidated, `B` book) [IB's field list, as copied
/// in Voyz/ibind `ibind/client/ibkr_definitions.py`; observed `RpB`, `DPB`, `ZB`: machdat/
/// broker-gateway `docs/research/ibkr-availability-code.md`]. IB sends it in the first (full)
/// frame of a subscription and afterwards only when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Availability(String);

/// What the first character of 6509 says about the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    RealTime,
    Delayed,
    Frozen,
    FrozenDelayed,
    NotSubscribed,
    /// A code IB does not document: never taken for real-time.
    Unknown,
}

impl Availability {
    /// Reads 6509; `None` for a value that is not a non-empty string.
    pub fn parse(v: &impl IbValue) -> Option<Self> {
        let s = v.string()?.trim();
        (!s.is_empty()).then(|| Self(s.to_string()))
    }

    pub fn code(&self) -> &str {
        &self.0
    }

    pub fn delivery(&self) -> Delivery {
        match self.0.as_bytes().first() {
            Some(b'R') => Delivery::RealTime,
            Some(b'D') => Delivery::Delayed,
            Some(b'Z') => Delivery::Frozen,
            Some(b'Y') => Delivery::FrozenDelayed,
            Some(b'N') => Delivery::NotSubscribed,
            _ => Delivery::Unknown,
        }
    }

    /// Only `R…` is real-time data; delayed, frozen, unsubscribed and unknown codes are not.
    pub fn is_realtime(&self) -> bool {
        self.delivery() == Delivery::RealTime
    }

    /// `realtime`, `delayed`, `frozen`, `frozen_delayed`, `none`, `unknown`: the label of the
    /// availability gauge and of `ctl subscriptions`.
    pub fn label(&self) -> &'static str {
        match self.delivery() {
            Delivery::RealTime => "realtime",
            Delivery::Delayed => "delayed",
            Delivery::Frozen => "frozen",
            Delivery::FrozenDelayed => "frozen_delayed",
            Delivery::NotSubscribed => "none",
            Delivery::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Availability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `authStatus` of `/tickle`, and the body of `/iserver/auth/status`, `ssodh/init`,
/// `reauthenticate` (when the gateway returns the status).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthStatus {
    pub authenticated: bool,
    pub competing: bool,
    pub connected: bool,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
    #[serde(rename = "MAC", skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub established: Option<bool>,
}

impl AuthStatus {
    /// Healthy as ibind defines it: authenticated, connected, and not competing.
    pub fn is_healthy(&self) -> bool {
        self.authenticated && self.connected && !self.competing
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IserverStatus {
    #[serde(rename = "authStatus")]
    pub auth_status: Option<AuthStatus>,
}

/// `POST /tickle`. Without a session the gateway answers 401 or `{"error":"no session"}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TickleResponse {
    pub session: Option<String>,
    #[serde(rename = "ssoExpires")]
    pub sso_expires: Option<i64>,
    /// IB's spelling.
    pub collission: Option<bool>,
    #[serde(rename = "userId")]
    pub user_id: Option<i64>,
    pub iserver: Option<IserverStatus>,
    pub error: Option<String>,
}

/// `GET /iserver/accounts`; `{}` when the session is competing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AccountsResponse {
    pub accounts: Vec<String>,
    #[serde(rename = "selectedAccount")]
    pub selected_account: Option<String>,
}

/// One contract of `GET /trsrv/stocks?symbols=…`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StockContract {
    pub conid: i64,
    pub exchange: String,
    #[serde(rename = "isUS")]
    pub is_us: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StockEntry {
    pub name: String,
    #[serde(rename = "assetClass")]
    pub asset_class: String,
    pub contracts: Vec<StockContract>,
}

/// `GET /trsrv/stocks?symbols=…`: symbol → entries.
pub type StocksResponse = BTreeMap<String, Vec<StockEntry>>;

/// One contract of `GET /trsrv/futures?symbols=…` (unexpired contracts only).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FutureContract {
    pub symbol: String,
    pub conid: i64,
    #[serde(rename = "underlyingConid")]
    pub underlying_conid: i64,
    /// `YYYYMMDD`.
    #[serde(rename = "expirationDate", deserialize_with = "de_yyyymmdd")]
    pub expiration_date: u32,
    /// Last trading day, `YYYYMMDD`.
    #[serde(deserialize_with = "de_yyyymmdd")]
    pub ltd: u32,
}

/// IB sends dates as numbers or as strings, depending on the endpoint version.
fn de_yyyymmdd<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
        Value::String(s) => s.trim().parse().ok(),
        Value::Null => Some(0),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom(format!("not a YYYYMMDD date: {v}")))
}

/// `GET /trsrv/futures?symbols=…`: root → contracts.
pub type FuturesResponse = BTreeMap<String, Vec<FutureContract>>;

/// One result of `/iserver/secdef/search`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SecdefSearchResult {
    #[serde(deserialize_with = "de_conid")]
    pub conid: i64,
    #[serde(rename = "companyHeader")]
    pub company_header: Option<String>,
    #[serde(rename = "companyName")]
    pub company_name: Option<String>,
    pub symbol: Option<String>,
    pub description: Option<String>,
}

fn de_conid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Value::deserialize(d)?;
    match &v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .ok_or_else(|| serde::de::Error::custom(format!("not a conid: {v}")))
}

/// Client → gateway websocket messages (`TOPIC+target+{json}`).
pub mod outbound {
    /// Subscribe (or add fields to) level-1 market data of a conid.
    pub fn smd(conid: i64, fields: &[&str]) -> String {
        let list: Vec<String> = fields.iter().map(|f| format!("\"{f}\"")).collect();
        format!("smd+{conid}+{{\"fields\":[{}]}}", list.join(","))
    }
    pub fn umd(conid: i64) -> String {
        format!("umd+{conid}+{{}}")
    }
    /// Subscribe to the BookTrader ladder of a conid (needs an L2 subscription at IB).
    pub fn sbd(account: &str, conid: i64) -> String {
        format!("sbd+{account}+{conid}")
    }
    pub fn ubd(account: &str) -> String {
        format!("ubd+{account}")
    }
    /// The client keepalive; does not replace `/tickle`.
    pub const TIC: &str = "tic";
    /// Session-frame authentication (alternative to the cookie).
    pub fn session(session: &str) -> String {
        serde_json::json!({ "session": session }).to_string()
    }
}

/// A market-data update of one conid: field id → raw value as IB sent it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MarketDataFrame {
    pub conid: Option<i64>,
    /// `_updated`, ms since the epoch.
    pub updated_ms: Option<i64>,
    pub fields: Fields,
}

/// One row of an `sbd` BookTrader ladder. Its values are IB's short strings, kept inline like
/// a frame's fields: the replay store holds many ladders, and a heap String per value was
/// most of their memory.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(default)]
pub struct BookRow {
    pub row: i64,
    pub focus: i64,
    pub price: Option<FieldValue>,
    pub bid: Option<FieldValue>,
    pub ask: Option<FieldValue>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct BookFrame {
    pub account: Option<String>,
    pub conid: Option<i64>,
    pub rows: Vec<BookRow>,
}

/// A websocket frame from the gateway, classified by topic.
#[derive(Debug, Clone, PartialEq)]
pub enum InboundFrame {
    /// `{"topic":"system","hb":ms}`.
    Heartbeat {
        server_ms: i64,
    },
    /// `{"topic":"system","success":"user"}`: the greeting.
    SystemGreeting {
        username: String,
    },
    /// `{"topic":"act",...}`: accounts.
    Accounts {
        accounts: Vec<String>,
        selected: Option<String>,
    },
    /// `{"topic":"sts","args":{...}}`: may carry a subset of the fields.
    Status(PartialAuthStatus),
    /// `{"topic":"tic",...}`: reply to our `tic`.
    TicReply,
    MarketData(MarketDataFrame),
    Book(BookFrame),
    /// `ntf` notification or `blt` bulletin: logged.
    Notice {
        topic: String,
        text: String,
    },
    /// `{"message":"waiting for session"}`.
    WaitingForSession,
    /// `error` key or `topic:"error"`.
    Error {
        message: String,
    },
    /// A valid JSON frame of a topic marketlane does not use.
    Other {
        topic: String,
    },
}

/// `sts` args: each field optional because the gateway may split them.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct PartialAuthStatus {
    pub authenticated: Option<bool>,
    pub competing: Option<bool>,
    pub connected: Option<bool>,
    pub message: Option<String>,
    pub fail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not UTF-8")]
    NotUtf8,
    #[error("frame is not JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object")]
    NotAnObject,
    #[error("frame of topic {topic}: {message}")]
    Malformed { topic: String, message: String },
}

impl FrameError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotUtf8 => "not_utf8",
            Self::NotJson(_) => "not_json",
            Self::NotAnObject => "not_an_object",
            Self::Malformed { .. } => "malformed_frame",
        }
    }
}

/// Classifies one websocket frame. Binary frames are passed as bytes: they are UTF-8 JSON when
/// well formed (the gateway sends some data frames as binary), and quarantined otherwise.
pub fn parse_frame(bytes: &[u8]) -> Result<InboundFrame, FrameError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FrameError::NotUtf8)?;
    // A ladder straight into its rows: the general path below builds a JSON tree of `data`
    // first (a map per row) and converts it. Anything this does not read as a plain ladder
    // (an `error` key, a malformed `data`, another topic) takes the general path, which gives
    // the same frame or the error.
    if text.contains("\"sbd")
        && let Ok(wire) = serde_json::from_str::<LadderWire>(text)
        && wire.error.is_none()
        && wire.topic.starts_with("sbd")
    {
        return Ok(InboundFrame::Book(wire.into_frame()));
    }
    parse_frame_generally(text)
}

/// An `sbd` frame as sent: the topic (`sbd+<account>+<conid>`) and the ladder.
#[derive(Deserialize)]
struct LadderWire<'a> {
    #[serde(borrow)]
    topic: std::borrow::Cow<'a, str>,
    #[serde(default)]
    data: Vec<BookRow>,
    #[serde(default)]
    error: Option<serde::de::IgnoredAny>,
}

impl LadderWire<'_> {
    fn into_frame(self) -> BookFrame {
        let mut parts = self.topic.split('+').skip(1);
        BookFrame {
            account: parts.next().map(String::from),
            conid: parts.next().and_then(|c| c.parse().ok()),
            rows: self.data,
        }
    }
}

fn parse_frame_generally(text: &str) -> Result<InboundFrame, FrameError> {
    // Straight into the sorted fields the frame keeps (no JSON object built and copied
    // first); only input that is not an object is parsed again, for the error it gets.
    let mut obj: Fields = match serde_json::from_str(text) {
        Ok(obj) => obj,
        Err(_) => {
            return Err(match serde_json::from_str::<Value>(text) {
                Err(e) => FrameError::NotJson(e.to_string()),
                Ok(_) => FrameError::NotAnObject,
            });
        }
    };
    let topic = obj
        .get("topic")
        .and_then(FieldValue::as_str)
        .unwrap_or_default()
        .to_string();
    let malformed = |message: &str| FrameError::Malformed {
        topic: topic.clone(),
        message: message.to_string(),
    };
    if let Some(err) = obj.get("error") {
        return Ok(InboundFrame::Error {
            message: err.as_str().map_or_else(|| err.to_string(), str::to_string),
        });
    }
    if topic.is_empty() {
        return match obj.get("message").and_then(FieldValue::as_str) {
            Some(m) if m.contains("waiting for session") => Ok(InboundFrame::WaitingForSession),
            // sts may also come without a topic, as a bare args object.
            _ if obj.contains_key("args") => {
                parse_status(obj.remove("args").map(FieldValue::into_value), &malformed)
            }
            _ => Err(malformed("no topic")),
        };
    }
    match topic.as_str() {
        "system" => {
            if let Some(hb) = obj.get("hb") {
                let server_ms = hb.as_i64().ok_or_else(|| malformed("hb is not a number"))?;
                Ok(InboundFrame::Heartbeat { server_ms })
            } else if let Some(user) = obj.get("success") {
                Ok(InboundFrame::SystemGreeting {
                    username: user.as_str().unwrap_or_default().to_string(),
                })
            } else {
                Ok(InboundFrame::Other { topic })
            }
        }
        "act" => {
            let args = obj.get("args").map_or(Value::Null, FieldValue::to_value);
            let accounts = args
                .get("accounts")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let selected = args
                .get("selectedAccount")
                .and_then(Value::as_str)
                .map(String::from);
            Ok(InboundFrame::Accounts { accounts, selected })
        }
        "sts" => parse_status(obj.remove("args").map(FieldValue::into_value), &malformed),
        "tic" => Ok(InboundFrame::TicReply),
        "ntf" | "blt" => {
            let args = obj.get("args").map_or(Value::Null, FieldValue::to_value);
            let text = ["text", "message", "title"]
                .iter()
                .find_map(|k| args.get(*k).and_then(Value::as_str))
                .unwrap_or_default()
                .to_string();
            Ok(InboundFrame::Notice { topic, text })
        }
        "error" => Ok(InboundFrame::Error {
            message: obj
                .get("message")
                .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_string))
                .unwrap_or_default(),
        }),
        t if t.starts_with("smd+") || t == "smd" => {
            let topic_conid = t.strip_prefix("smd+").and_then(|c| c.parse().ok());
            let conid = obj
                .remove("conid")
                .as_ref()
                .and_then(FieldValue::as_i64)
                .or(topic_conid);
            let updated_ms = match obj.remove("_updated") {
                None => None,
                Some(v) => Some(
                    v.as_i64()
                        .ok_or_else(|| malformed("_updated is not a number"))?,
                ),
            };
            for meta in ["topic", "conidEx", "server_id"] {
                obj.remove(meta);
            }
            Ok(InboundFrame::MarketData(MarketDataFrame {
                conid,
                updated_ms,
                fields: obj,
            }))
        }
        t if t.starts_with("sbd") => {
            let mut parts = t.split('+').skip(1);
            let account = parts.next().map(String::from);
            let conid = parts.next().and_then(|c| c.parse().ok());
            let rows: Vec<BookRow> = match obj.remove("data") {
                Some(data) => serde_json::from_value(data.into_value())
                    .map_err(|e| malformed(&format!("bad ladder: {e}")))?,
                None => Vec::new(),
            };
            Ok(InboundFrame::Book(BookFrame {
                account,
                conid,
                rows,
            }))
        }
        _ => Ok(InboundFrame::Other { topic }),
    }
}

fn parse_status(
    args: Option<Value>,
    malformed: &dyn Fn(&str) -> FrameError,
) -> Result<InboundFrame, FrameError> {
    let args = args.unwrap_or(Value::Null);
    if args.is_null() {
        return Ok(InboundFrame::Status(PartialAuthStatus::default()));
    }
    serde_json::from_value(args)
        .map(InboundFrame::Status)
        .map_err(|e| malformed(&format!("bad sts args: {e}")))
}

/// What a `31` (last price) value says.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LastPrice {
    /// A trade price.
    Trade(f64),
    /// `C` prefix: the prior close, not a trade.
    PriorClose(f64),
    /// `H` prefix: trading is halted, not a trade.
    Halted(f64),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("field {field}: cannot read {value} as a number")]
pub struct ValueError {
    pub field: String,
    pub value: String,
}

/// A value IB sent, as parsed into a frame's [`Fields`] or, off the hot path (ladder rows,
/// the econ feed), a `serde_json::Value`: its text when it is a string or a number.
pub trait IbValue: std::fmt::Display {
    fn text(&self) -> Option<std::borrow::Cow<'_, str>>;
    /// The value when it is a string.
    fn string(&self) -> Option<&str>;
}

impl IbValue for FieldValue {
    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            FieldValue::Str(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            FieldValue::Num(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            FieldValue::Other(_) => None,
        }
    }

    fn string(&self) -> Option<&str> {
        self.as_str()
    }
}

impl IbValue for Value {
    fn text(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            Value::String(s) => Some(std::borrow::Cow::Borrowed(s.as_str())),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            _ => None,
        }
    }

    fn string(&self) -> Option<&str> {
        self.as_str()
    }
}

/// A plain decimal with optional thousands commas; `None` unless finite. Parsed in place: a
/// String only for the rare value with commas.
pub fn parse_decimal(text: &str) -> Option<f64> {
    let t = text.trim();
    let x: f64 = if t.contains(',') {
        t.chars()
            .filter(|c| *c != ',')
            .collect::<String>()
            .parse()
            .ok()?
    } else {
        t.parse().ok()?
    };
    x.is_finite().then_some(x)
}

fn value_error(field: &str, v: &impl IbValue) -> ValueError {
    ValueError {
        field: field.to_string(),
        value: v.to_string(),
    }
}

/// Parses a plain decimal as IB sends it: a string (maybe with thousands commas) or a number.
pub fn parse_number(field: &str, v: &impl IbValue) -> Result<f64, ValueError> {
    v.text()
        .and_then(|t| parse_decimal(&t))
        .ok_or_else(|| value_error(field, v))
}

/// Parses field 31, with its `C` (prior close) and `H` (halted) prefixes.
pub fn parse_last_price(v: &impl IbValue) -> Result<LastPrice, ValueError> {
    let err = || value_error(field::LAST, v);
    let text = v.text().ok_or_else(err)?;
    let text = text.trim();
    let (kind, rest): (fn(f64) -> LastPrice, &str) = match text.as_bytes().first() {
        Some(b'C') => (LastPrice::PriorClose, &text[1..]),
        Some(b'H') => (LastPrice::Halted, &text[1..]),
        _ => (LastPrice::Trade, text),
    };
    parse_decimal(rest).map(kind).ok_or_else(err)
}

/// Parses an abbreviated volume (field 87): `1.2M`, `350K`, `1,234`.
pub fn parse_abbreviated(field: &str, v: &impl IbValue) -> Result<f64, ValueError> {
    let err = || value_error(field, v);
    let text = v.text().ok_or_else(err)?;
    let t = text.trim();
    let (num, mult) = match t.chars().last() {
        Some('K' | 'k') => (&t[..t.len() - 1], 1e3),
        Some('M' | 'm') => (&t[..t.len() - 1], 1e6),
        Some('B' | 'b') => (&t[..t.len() - 1], 1e9),
        _ => (t, 1.0),
    };
    parse_decimal(num).map(|x| x * mult).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fv(v: Value) -> FieldValue {
        v.into()
    }

    #[test]
    fn smd_frame_from_the_reference() {
        let f = br#"{"31":"189.60","6119":"q2","6509":"RpB","84":"189.56","85":"500","86":"189.61","88":"200","_updated":1712596911593,"conid":8314,"conidEx":"8314","server_id":"q2","topic":"smd+8314"}"#;
        let InboundFrame::MarketData(md) = parse_frame(f).unwrap() else {
            panic!("not market data")
        };
        assert_eq!(md.conid, Some(8314));
        assert_eq!(md.updated_ms, Some(1_712_596_911_593));
        assert_eq!(md.fields.get("31"), Some(&fv(json!("189.60"))));
        assert!(!md.fields.contains_key("topic") && !md.fields.contains_key("conidEx"));
    }

    #[test]
    fn availability_codes() {
        let a = |s: &str| Availability::parse(&fv(json!(s))).unwrap();
        for (code, rt, label) in [
            ("RpB", true, "realtime"),
            ("RPB", true, "realtime"),
            ("R", true, "realtime"),
            ("DPB", false, "delayed"),
            ("ZB", false, "frozen"),
            ("Yp", false, "frozen_delayed"),
            ("N", false, "none"),
            ("F", false, "unknown"),
        ] {
            assert_eq!(a(code).is_realtime(), rt, "{code}");
            assert_eq!(a(code).label(), label, "{code}");
        }
        assert_eq!(Availability::parse(&fv(json!(""))), None);
        assert_eq!(Availability::parse(&fv(json!(1))), None);
    }

    #[test]
    fn conid_falls_back_to_the_topic() {
        let f = br#"{"topic":"smd+265598","31":"1","_updated":5}"#;
        let InboundFrame::MarketData(md) = parse_frame(f).unwrap() else {
            panic!()
        };
        assert_eq!(md.conid, Some(265_598));
    }

    #[test]
    fn system_frames() {
        assert_eq!(
            parse_frame(br#"{"topic":"system","hb":1712596911593}"#).unwrap(),
            InboundFrame::Heartbeat {
                server_ms: 1_712_596_911_593
            }
        );
        assert_eq!(
            parse_frame(br#"{"topic":"system","success":"user1","isFT":false,"isPaper":false}"#)
                .unwrap(),
            InboundFrame::SystemGreeting {
                username: "user1".into()
            }
        );
        assert_eq!(
            parse_frame(br#"{"message":"waiting for session"}"#).unwrap(),
            InboundFrame::WaitingForSession
        );
        let InboundFrame::Status(s) =
            parse_frame(br#"{"topic":"sts","args":{"authenticated":false}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.authenticated, Some(false));
        assert_eq!(s.competing, None);
        let InboundFrame::Status(s) = parse_frame(br#"{"args":{"competing":false}}"#).unwrap()
        else {
            panic!()
        };
        assert_eq!(s.competing, Some(false));
        assert_eq!(
            parse_frame(br#"{"topic":"tic","alive":true,"id":"x","lastAccessed":1}"#).unwrap(),
            InboundFrame::TicReply
        );
        assert!(matches!(
            parse_frame(br#"{"topic":"ntf","args":{"id":1,"text":"hello"}}"#).unwrap(),
            InboundFrame::Notice { ref text, .. } if text == "hello"
        ));
    }

    #[test]
    fn bad_frames_are_errors_with_codes() {
        assert_eq!(parse_frame(&[0xff, 0x00]).unwrap_err().code(), "not_utf8");
        assert_eq!(parse_frame(b"{\"topic\":").unwrap_err().code(), "not_json");
        assert_eq!(parse_frame(b"[1,2]").unwrap_err().code(), "not_an_object");
        assert_eq!(
            parse_frame(br#"{"topic":"smd+1","_updated":"soon"}"#)
                .unwrap_err()
                .code(),
            "malformed_frame"
        );
        assert_eq!(
            parse_frame(br#"{"topic":"system","hb":"x"}"#)
                .unwrap_err()
                .code(),
            "malformed_frame"
        );
    }

    /// The ladder's direct path gives what the general path gives, frame or error.
    #[test]
    fn ladders_read_directly_equal_the_general_path() {
        let frames = [
            r#"{"topic":"sbd+DU1+265598","data":[{"row":0,"focus":0,"price":"189.70","ask":"300"},{"row":2,"focus":0,"price":"189.60","bid":"1,200"}]}"#,
            r#"{"data":[{"bid":7,"price":189.5,"row":1,"focus":1}],"topic":"sbd+DU1+5","server_id":"q0"}"#,
            r#"{"topic":"\u0073bd+DU2+7","data":[]}"#,
            r#"{"topic":"sbd+DU1+5"}"#,
            r#"{"topic":"sbd+DU1+5","data":null}"#,
            r#"{"topic":"sbd+DU1+5","data":[{"row":"x"}]}"#,
            r#"{"topic":"sbd+DU1+5","data":{"row":1}}"#,
            r#"{"topic":"sbd+DU1+5","error":"no market data permission"}"#,
            r#"{"topic":"sbd+DU1+5","data":[],"data":[{"row":1,"focus":0,"price":"1"}]}"#,
            r#"{"topic":"smd+5","31":"\"sbd","_updated":1}"#,
            r#"{"topic":"sbd","data":[{"row":0,"focus":0,"price":"1","ask":"2","extra":{"a":[1]}}]}"#,
            r#"{"topic":"sbd+DU1+notanumber","data":[]}"#,
        ];
        for f in frames {
            assert_eq!(parse_frame(f.as_bytes()), parse_frame_generally(f), "{f}");
        }
        // The plain ladders did take the direct path.
        for f in &frames[..4] {
            assert!(serde_json::from_str::<LadderWire>(f).is_ok(), "{f}");
        }
    }

    #[test]
    fn book_ladder() {
        let f = br#"{"topic":"sbd+DU1+265598","data":[{"row":0,"focus":0,"price":"189.70","ask":"300"},{"row":1,"focus":1,"price":"189.65"},{"row":2,"focus":0,"price":"189.60","bid":"1,200"}]}"#;
        let InboundFrame::Book(b) = parse_frame(f).unwrap() else {
            panic!()
        };
        assert_eq!(b.account.as_deref(), Some("DU1"));
        assert_eq!(b.conid, Some(265_598));
        assert_eq!(b.rows.len(), 3);
        assert_eq!(b.rows[2].bid, Some(fv(json!("1,200"))));
    }

    #[test]
    fn value_quirks() {
        assert_eq!(
            parse_last_price(&fv(json!("189.60"))).unwrap(),
            LastPrice::Trade(189.6)
        );
        assert_eq!(
            parse_last_price(&fv(json!("C189.60"))).unwrap(),
            LastPrice::PriorClose(189.6)
        );
        assert_eq!(
            parse_last_price(&fv(json!("H12"))).unwrap(),
            LastPrice::Halted(12.0)
        );
        assert!(parse_last_price(&fv(json!(""))).is_err());
        assert!(parse_last_price(&fv(json!("HX"))).is_err());
        assert_eq!(parse_number("85", &fv(json!("1,300"))).unwrap(), 1300.0);
        assert_eq!(parse_number("83", &fv(json!(1.25))).unwrap(), 1.25);
        assert!(parse_number("85", &fv(json!("NaN"))).is_err());
        assert!(parse_number("85", &fv(json!(true))).is_err());
        assert_eq!(
            parse_abbreviated("87", &fv(json!("1.2M"))).unwrap(),
            1_200_000.0
        );
        assert_eq!(
            parse_abbreviated("87", &fv(json!("350K"))).unwrap(),
            350_000.0
        );
        assert_eq!(
            parse_abbreviated("87", &fv(json!("1,234"))).unwrap(),
            1234.0
        );
    }

    #[test]
    fn outbound_commands() {
        assert_eq!(
            outbound::smd(265_598, &["31", "7059"]),
            r#"smd+265598+{"fields":["31","7059"]}"#
        );
        assert_eq!(outbound::umd(1), "umd+1+{}");
        assert_eq!(outbound::sbd("DU1", 2), "sbd+DU1+2");
        assert_eq!(outbound::session("abc"), r#"{"session":"abc"}"#);
    }

    #[test]
    fn rest_shapes_parse() {
        let t: TickleResponse = serde_json::from_value(json!({"session":"bb66","ssoExpires":460311,"collission":false,"userId":1,"hmds":{"error":"no bridge"},"iserver":{"authStatus":{"authenticated":true,"competing":false,"connected":true,"message":"","MAC":"98:F2","serverInfo":{"serverName":"x"}}}})).unwrap();
        let st = t.iserver.unwrap().auth_status.unwrap();
        assert!(st.is_healthy());
        let f: FuturesResponse = serde_json::from_value(json!({"CL":[{"symbol":"CL","conid":1,"underlyingConid":2,"expirationDate":20261120,"ltd":"20261119"}]})).unwrap();
        assert_eq!(f["CL"][0].ltd, 20_261_119);
        let s: Vec<SecdefSearchResult> =
            serde_json::from_value(json!([{"conid":"265598","symbol":"AAPL"}])).unwrap();
        assert_eq!(s[0].conid, 265_598);
    }
}
