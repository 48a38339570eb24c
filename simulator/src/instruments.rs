//! The instrument universe: a fixed set of commodity-related US stocks and monthly futures
//! (conids stable across runs; only AAPL's 265598 is IB's real conid), plus optional
//! synthetic stocks for load tests. Also renders the contract-lookup responses.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use time::{Date, Month, OffsetDateTime};

/// First conid of the synthetic stocks SYM0001….
pub const SYNTHETIC_CONID_BASE: u32 = 900_000;
const FUTURE_CONID_BASE: u32 = 600_000_000;
const UNDERLYING_CONID_BASE: u32 = 700_000_000;
/// Contract months generated per futures root, starting at the sim clock's month. Contracts
/// expire on the 20th of the month before their contract month, so at least four are live.
const FUTURE_MONTHS: u32 = 7;

#[derive(Debug, Clone, PartialEq)]
pub enum SecKind {
    Stock,
    Future {
        root: String,
        underlying_conid: u32,
        /// Contract month, e.g. (2026, 1).
        month: (i32, u8),
        /// YYYYMMDD as IB prints it.
        expiration: u32,
        ltd: u32,
    },
}

#[derive(Debug, Clone)]
pub struct Instrument {
    pub conid: u32,
    /// Stock ticker or futures root.
    pub symbol: String,
    pub name: String,
    pub exchange: String,
    pub kind: SecKind,
    pub tick_size: f64,
    pub decimals: usize,
    pub base_price: f64,
    /// US stocks quote 85/88/7059 in lots of 100 shares.
    pub lots: bool,
}

impl Instrument {
    pub fn sec_type(&self) -> &'static str {
        match self.kind {
            SecKind::Stock => "STK",
            SecKind::Future { .. } => "FUT",
        }
    }
}

struct StockSpec(&'static str, u32, &'static str, &'static str, f64);
struct FutureSpec(&'static str, &'static str, &'static str, f64, f64, usize);

const STOCKS: &[StockSpec] = &[
    StockSpec("AAPL", 265_598, "APPLE INC", "NASDAQ", 189.60),
    StockSpec("XOM", 13_977, "EXXON MOBIL CORP", "NYSE", 112.40),
    StockSpec("CVX", 5_932, "CHEVRON CORP", "NYSE", 158.25),
    StockSpec("COP", 4_539, "CONOCOPHILLIPS", "NYSE", 118.70),
    StockSpec("OXY", 9_408, "OCCIDENTAL PETROLEUM CORP", "NYSE", 62.15),
    StockSpec("SLB", 8_823, "SCHLUMBERGER LTD", "NYSE", 48.90),
    StockSpec("HAL", 6_180, "HALLIBURTON CO", "NYSE", 36.45),
    StockSpec("EOG", 6_671, "EOG RESOURCES INC", "NYSE", 127.80),
    StockSpec("MPC", 87_423_601, "MARATHON PETROLEUM CORP", "NYSE", 171.30),
    StockSpec("VLO", 8_971, "VALERO ENERGY CORP", "NYSE", 152.60),
    StockSpec("FCX", 7_158, "FREEPORT-MCMORAN INC", "NYSE", 47.85),
    StockSpec("ADM", 3_830, "ARCHER-DANIELS-MIDLAND CO", "NYSE", 60.20),
    StockSpec("NEM", 8_004, "NEWMONT CORP", "NYSE", 41.10),
    StockSpec(
        "USO",
        36_349_012,
        "UNITED STATES OIL FUND LP",
        "ARCA",
        76.35,
    ),
    StockSpec(
        "UNG",
        36_349_013,
        "UNITED STATES NATURAL GAS FUND",
        "ARCA",
        15.40,
    ),
    StockSpec("XLE", 4_215_220, "ENERGY SELECT SECTOR SPDR", "ARCA", 93.55),
    StockSpec("GLD", 51_529_211, "SPDR GOLD SHARES", "ARCA", 216.80),
    StockSpec("SLV", 39_039_301, "ISHARES SILVER TRUST", "ARCA", 25.35),
];

/// root, name, exchange, base price, tick size, decimals.
const FUTURES: &[FutureSpec] = &[
    FutureSpec("CL", "Light Sweet Crude Oil", "NYMEX", 78.50, 0.01, 2),
    FutureSpec("NG", "Henry Hub Natural Gas", "NYMEX", 2.850, 0.001, 3),
    FutureSpec("RB", "RBOB Gasoline", "NYMEX", 2.4500, 0.0001, 4),
    FutureSpec("HO", "NY Harbor ULSD", "NYMEX", 2.6500, 0.0001, 4),
    FutureSpec("GC", "Gold", "COMEX", 2350.0, 0.1, 1),
    FutureSpec("SI", "Silver", "COMEX", 28.500, 0.005, 3),
    FutureSpec("HG", "Copper", "COMEX", 4.5000, 0.0005, 4),
    FutureSpec("ZC", "Corn", "CBOT", 452.25, 0.25, 2),
    FutureSpec("ZW", "Wheat", "CBOT", 585.50, 0.25, 2),
    FutureSpec("ZS", "Soybeans", "CBOT", 1185.75, 0.25, 2),
    FutureSpec("ES", "E-mini S&P 500", "CME", 5250.00, 0.25, 2),
];

const MONTH_CODES: [&str; 12] = [
    "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
];

#[derive(Debug, Clone)]
pub struct FutureRoot {
    pub root: String,
    pub name: String,
    pub exchange: String,
    pub underlying_conid: u32,
    /// Ordered by expiration.
    pub contracts: Vec<Arc<Instrument>>,
}

#[derive(Debug, Default)]
pub struct Universe {
    by_conid: HashMap<u32, Arc<Instrument>>,
    stocks: BTreeMap<String, Arc<Instrument>>,
    roots: BTreeMap<String, FutureRoot>,
}

fn yyyymmdd(d: Date) -> u32 {
    d.year() as u32 * 10_000 + u8::from(d.month()) as u32 * 100 + d.day() as u32
}

fn date_of_ms(ms: i64) -> Date {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map(|t| t.date())
        .unwrap_or(Date::MIN)
}

/// (year, month) shifted by `add` months.
fn add_months(year: i32, month: u8, add: i32) -> (i32, u8) {
    let idx = year * 12 + (month as i32 - 1) + add;
    (idx.div_euclid(12), (idx.rem_euclid(12) + 1) as u8)
}

impl Universe {
    /// Builds the universe; futures months are laid out around `now_ms` (sim clock).
    pub fn build(now_ms: i64, synthetic: u32, seed: u64) -> Self {
        let mut u = Universe::default();
        for s in STOCKS {
            u.insert_stock(Instrument {
                conid: s.1,
                symbol: s.0.into(),
                name: s.2.into(),
                exchange: s.3.into(),
                kind: SecKind::Stock,
                tick_size: 0.01,
                decimals: 2,
                base_price: s.4,
                lots: true,
            });
        }
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5e7_5e7);
        for i in 1..=synthetic {
            let cents: i64 = rng.random_range(1_000..50_000);
            u.insert_stock(Instrument {
                conid: SYNTHETIC_CONID_BASE + i,
                symbol: format!("SYM{i:04}"),
                name: format!("SYNTHETIC {i:04} INC"),
                exchange: "NYSE".into(),
                kind: SecKind::Stock,
                tick_size: 0.01,
                decimals: 2,
                base_price: cents as f64 / 100.0,
                lots: true,
            });
        }
        let today = date_of_ms(now_ms);
        for (idx, f) in FUTURES.iter().enumerate() {
            let idx = idx as u32 + 1;
            let underlying_conid = UNDERLYING_CONID_BASE + idx;
            let mut contracts = Vec::new();
            for m in 0..FUTURE_MONTHS as i32 {
                let (y, mo) = add_months(today.year(), u8::from(today.month()), m);
                let (py, pm) = add_months(y, mo, -1);
                let Ok(pmonth) = Month::try_from(pm) else {
                    continue;
                };
                let Ok(exp) = Date::from_calendar_date(py, pmonth, 20) else {
                    continue;
                };
                let ltd = exp.previous_day().unwrap_or(exp);
                let inst = Arc::new(Instrument {
                    conid: FUTURE_CONID_BASE + idx * 10_000 + (y % 100) as u32 * 100 + mo as u32,
                    symbol: f.0.into(),
                    name: f.1.into(),
                    exchange: f.2.into(),
                    kind: SecKind::Future {
                        root: f.0.into(),
                        underlying_conid,
                        month: (y, mo),
                        expiration: yyyymmdd(exp),
                        ltd: yyyymmdd(ltd),
                    },
                    tick_size: f.4,
                    decimals: f.5,
                    // Contango: each later month a little dearer, so months are distinguishable.
                    base_price: f.3 * (1.0 + 0.004 * m as f64),
                    lots: false,
                });
                u.by_conid.insert(inst.conid, inst.clone());
                contracts.push(inst);
            }
            u.roots.insert(
                f.0.into(),
                FutureRoot {
                    root: f.0.into(),
                    name: f.1.into(),
                    exchange: f.2.into(),
                    underlying_conid,
                    contracts,
                },
            );
        }
        u
    }

    fn insert_stock(&mut self, i: Instrument) {
        let i = Arc::new(i);
        self.by_conid.insert(i.conid, i.clone());
        self.stocks.insert(i.symbol.clone(), i);
    }

    pub fn get(&self, conid: u32) -> Option<&Arc<Instrument>> {
        self.by_conid.get(&conid)
    }

    pub fn len(&self) -> usize {
        self.by_conid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_conid.is_empty()
    }

    pub fn stock(&self, symbol: &str) -> Option<&Arc<Instrument>> {
        self.stocks.get(&symbol.to_ascii_uppercase())
    }

    pub fn future_root(&self, root: &str) -> Option<&FutureRoot> {
        self.roots.get(&root.to_ascii_uppercase())
    }

    /// Live (unexpired at `now_ms`) contracts of a root, front month first.
    pub fn live_futures(&self, root: &str, now_ms: i64) -> Vec<Arc<Instrument>> {
        let today = yyyymmdd(date_of_ms(now_ms));
        self.future_root(root)
            .map(|r| {
                r.contracts
                    .iter()
                    .filter(|c| matches!(c.kind, SecKind::Future { expiration, .. } if expiration >= today))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `GET /trsrv/stocks?symbols=A,B`. An unknown symbol keeps its key with an empty array
    /// (`{"FOO":[]}`): the tolerant documented shape, so clients can tell "asked, none found".
    pub fn trsrv_stocks(&self, symbols: &str) -> Value {
        let mut out = serde_json::Map::new();
        for sym in split_symbols(symbols) {
            let list = match self.stock(&sym) {
                Some(i) => json!([{
                    "name": i.name,
                    "chineseName": null,
                    "assetClass": "STK",
                    "contracts": [{"conid": i.conid, "exchange": i.exchange, "isUS": true}],
                }]),
                None => json!([]),
            };
            out.insert(sym, list);
        }
        Value::Object(out)
    }

    /// `GET /trsrv/futures?symbols=CL,NG`: unexpired contracts only, front month first. An
    /// unknown root keeps its key with an empty array.
    pub fn trsrv_futures(&self, symbols: &str, now_ms: i64) -> Value {
        let mut out = serde_json::Map::new();
        for sym in split_symbols(symbols) {
            let list: Vec<Value> = self
                .live_futures(&sym, now_ms)
                .iter()
                .filter_map(|c| match &c.kind {
                    SecKind::Future {
                        underlying_conid,
                        expiration,
                        ltd,
                        ..
                    } => Some(json!({
                        "symbol": c.symbol,
                        "conid": c.conid,
                        "underlyingConid": underlying_conid,
                        "expirationDate": expiration,
                        "ltd": ltd,
                        "shortFuturesCutOff": ltd,
                        "longFuturesCutOff": ltd,
                    })),
                    SecKind::Stock => None,
                })
                .collect();
            out.insert(sym, Value::Array(list));
        }
        Value::Object(out)
    }

    /// `/iserver/secdef/search`. No match gives `[]` (the tolerant shape; IB has also been
    /// seen answering an error object for unknown symbols).
    pub fn secdef_search(
        &self,
        symbol: &str,
        by_name: bool,
        sec_type: Option<&str>,
        now_ms: i64,
    ) -> Value {
        let sym = symbol.trim().to_ascii_uppercase();
        let want = |t: &str| sec_type.is_none_or(|s| s.eq_ignore_ascii_case(t));
        let mut out = Vec::new();
        if want("STK") {
            let hits: Vec<&Arc<Instrument>> = if by_name {
                self.stocks
                    .values()
                    .filter(|i| !sym.is_empty() && i.name.contains(&sym))
                    .collect()
            } else {
                self.stock(&sym).into_iter().collect()
            };
            for i in hits {
                out.push(json!({
                    "conid": i.conid,
                    "companyHeader": format!("{} - {}", i.name, i.exchange),
                    "companyName": i.name,
                    "symbol": i.symbol,
                    "description": i.exchange,
                    "restricted": null,
                    "fop": null,
                    "opt": null,
                    "war": null,
                    "sections": [{"secType": "STK"}],
                }));
            }
        }
        if want("FUT")
            && let Some(r) = self.future_root(&sym)
        {
            let months: Vec<String> = self
                .live_futures(&r.root, now_ms)
                .iter()
                .filter_map(|c| match c.kind {
                    SecKind::Future { month: (y, m), .. } => Some(format!(
                        "{}{:02}",
                        MONTH_CODES[(m as usize).saturating_sub(1) % 12],
                        y % 100
                    )),
                    SecKind::Stock => None,
                })
                .collect();
            out.push(json!({
                "conid": r.underlying_conid,
                "companyHeader": format!("{} - {}", r.name, r.exchange),
                "companyName": r.name,
                "symbol": r.root,
                "description": r.exchange,
                "restricted": null,
                "fop": null,
                "opt": null,
                "war": null,
                "sections": [{"secType": "FUT", "months": months.join(";"), "exchange": format!("{};", r.exchange)}],
            }));
        }
        Value::Array(out)
    }
}

fn split_symbols(s: &str) -> Vec<String> {
    s.split(',')
        .map(|x| x.trim().to_ascii_uppercase())
        .filter(|x| !x.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-01-25 12:00 UTC
    const NOW: i64 = 1_769_342_400_000;

    #[test]
    fn front_and_next_month_exist() {
        let u = Universe::build(NOW, 3, 7);
        let cl = u.live_futures("CL", NOW);
        assert!(cl.len() >= 2, "{cl:?}");
        // Jan 25: the FEB26 contract expired on Jan 20, so MAR26 is the front month.
        match &cl[0].kind {
            SecKind::Future {
                month, expiration, ..
            } => {
                assert_eq!(*month, (2026, 3));
                assert_eq!(*expiration, 20260220);
            }
            SecKind::Stock => panic!("not a future"),
        }
        assert_eq!(u.stock("sym0003").map(|i| i.conid), Some(900_003));
        assert_eq!(u.stock("AAPL").map(|i| i.conid), Some(265_598));
    }

    #[test]
    fn lookup_shapes() {
        let u = Universe::build(NOW, 0, 7);
        let v = u.trsrv_stocks("AAPL,NOPE");
        assert_eq!(v["AAPL"][0]["contracts"][0]["conid"], 265_598);
        assert_eq!(v["NOPE"], json!([]));
        let f = u.trsrv_futures("ng", NOW);
        assert!(f["NG"][0]["expirationDate"].is_u64());
        assert_eq!(u.secdef_search("zzz", false, None, NOW), json!([]));
        let s = u.secdef_search("CL", false, Some("FUT"), NOW);
        assert!(
            s[0]["sections"][0]["months"]
                .as_str()
                .is_some_and(|m| m.starts_with("MAR26"))
        );
    }
}
