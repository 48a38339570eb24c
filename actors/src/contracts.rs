//! Resolution of configured symbols to IB contract ids (conids), with the units the normalizers
//! write into the category rows.

use std::collections::BTreeMap;

use crate::config::{SecType, SymbolConfig};
use crate::ib_client::{IbClient, IbError};

/// A resolved instrument: what the normalizers need to turn IB fields into category rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Instrument {
    /// The symbol as configured (`AAPL`, `CL`); futures add the contract month in `contract`.
    pub symbol: String,
    pub conid: i64,
    pub sec_type: SecType,
    pub exchange: String,
    /// The futures contract chosen (last trading day `YYYYMMDD`), if a future.
    pub last_trading_day: Option<u32>,
    pub price_unit: String,
    /// The unit of IB's bid and ask sizes (88/85, and `sbd` ladder sizes): IB divides them by
    /// 100 for US stocks (lots of 100 shares). Trade sizes (7059) have
    /// [`Instrument::trade_size_unit`].
    pub size_unit: String,
    /// Also stream the BookTrader ladder (`sbd`).
    pub depth: bool,
}

impl Instrument {
    /// The unit of 7059 (last size): "the number of units traded at the last price", shares or
    /// contracts; IB documents the division by 100 only for 88/85.
    pub fn trade_size_unit(&self) -> &'static str {
        match self.sec_type {
            SecType::Stock => "1_shares",
            SecType::Future => "1_contracts",
        }
    }

    /// The `symbol_type` column value.
    pub fn symbol_type(&self) -> &'static str {
        match self.sec_type {
            SecType::Stock => "stocks",
            SecType::Future => "futures",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ContractError {
    #[error("unknown symbol {symbol}: the gateway has no {kind} contract for it")]
    UnknownSymbol { symbol: String, kind: &'static str },
    #[error("future {symbol}: no contract trades after the roll date {roll_date}")]
    NoFrontMonth { symbol: String, roll_date: u32 },
    #[error(transparent)]
    Ib(#[from] IbError),
}

/// Picks the front-month contract: the earliest whose last trading day is after `roll_date`
/// (today plus the roll lead), so we roll to the next month before the last trading day.
pub fn front_month(
    contracts: &[marketlane_protocol::ib::FutureContract],
    roll_date: u32,
) -> Option<&marketlane_protocol::ib::FutureContract> {
    contracts
        .iter()
        .filter(|c| c.ltd > roll_date || (c.ltd == 0 && c.expiration_date > roll_date))
        .min_by_key(|c| if c.ltd > 0 { c.ltd } else { c.expiration_date })
}

/// `YYYYMMDD` of a Unix time in seconds (UTC), without a date library: days → civil date
/// (Howard Hinnant's algorithm).
pub fn yyyymmdd(unix_secs: i64) -> u32 {
    let z = unix_secs.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    u32::try_from(y * 10_000 + m * 100 + d).unwrap_or(0)
}

/// Resolves every configured symbol. Unknown symbols are errors that name the symbol; the
/// caller decides whether one bad symbol stops the others (it does not: see the supervisor).
pub async fn resolve(
    client: &IbClient,
    symbols: &[SymbolConfig],
    now_unix_secs: i64,
    roll_days: i64,
) -> BTreeMap<String, Result<Instrument, ContractError>> {
    let mut out = BTreeMap::new();
    let stocks: Vec<String> = symbols
        .iter()
        .filter(|s| s.sec_type == SecType::Stock)
        .map(|s| s.symbol.clone())
        .collect();
    let futures: Vec<String> = symbols
        .iter()
        .filter(|s| s.sec_type == SecType::Future)
        .map(|s| s.symbol.clone())
        .collect();
    let stock_reply = if stocks.is_empty() {
        Ok(Default::default())
    } else {
        client.stocks(&stocks).await
    };
    let future_reply = if futures.is_empty() {
        Ok(Default::default())
    } else {
        client.futures(&futures).await
    };
    let roll_date = yyyymmdd(now_unix_secs + roll_days * 86_400);
    for s in symbols {
        let result = match s.sec_type {
            SecType::Stock => match &stock_reply {
                Err(e) => Err(ContractError::Ib(clone_err(e))),
                Ok(reply) => {
                    let want = s.exchange.as_deref();
                    reply
                        .get(&s.symbol)
                        .into_iter()
                        .flatten()
                        .flat_map(|e| e.contracts.iter().map(move |c| (e, c)))
                        // Prefer a US listing; the routing exchange is SMART unless configured.
                        .find(|(_, c)| c.is_us || want.is_some_and(|w| w == c.exchange))
                        .map(|(_, c)| Instrument {
                            symbol: s.symbol.clone(),
                            conid: c.conid,
                            sec_type: SecType::Stock,
                            exchange: want.unwrap_or("SMART").to_string(),
                            last_trading_day: None,
                            price_unit: "1_USdollar".into(),
                            size_unit: if c.is_us { "100_shares" } else { "1_shares" }.into(),
                            depth: s.depth,
                        })
                        .ok_or_else(|| ContractError::UnknownSymbol {
                            symbol: s.symbol.clone(),
                            kind: "stock",
                        })
                }
            },
            SecType::Future => match &future_reply {
                Err(e) => Err(ContractError::Ib(clone_err(e))),
                Ok(reply) => match reply.get(&s.symbol).filter(|c| !c.is_empty()) {
                    None => Err(ContractError::UnknownSymbol {
                        symbol: s.symbol.clone(),
                        kind: "futures",
                    }),
                    Some(contracts) => front_month(contracts, roll_date)
                        .map(|c| Instrument {
                            symbol: s.symbol.clone(),
                            conid: c.conid,
                            sec_type: SecType::Future,
                            exchange: s.exchange.clone().unwrap_or_default(),
                            last_trading_day: Some(c.ltd),
                            price_unit: "1_USdollar".into(),
                            size_unit: "1_contracts".into(),
                            depth: s.depth,
                        })
                        .ok_or_else(|| ContractError::NoFrontMonth {
                            symbol: s.symbol.clone(),
                            roll_date,
                        }),
                },
            },
        };
        out.insert(s.symbol.clone(), result);
    }
    out
}

/// IbError holds no clonable sources; rebuild the retry-relevant variant with its text.
fn clone_err(e: &IbError) -> IbError {
    match e {
        IbError::NoSession(m) => IbError::NoSession(m.clone()),
        IbError::NoBridge => IbError::NoBridge,
        IbError::RateLimited(m) => IbError::RateLimited(m.clone()),
        other => IbError::BadReply {
            endpoint: "contract lookup".into(),
            message: other.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use marketlane_protocol::ib::FutureContract;

    #[test]
    fn civil_dates() {
        assert_eq!(yyyymmdd(0), 19_700_101);
        assert_eq!(yyyymmdd(1_712_596_911), 20_240_408);
        assert_eq!(yyyymmdd(951_782_400), 20_000_229);
    }

    #[test]
    fn front_month_rolls_before_last_trading_day() {
        let c = |conid, ltd| FutureContract {
            symbol: "CL".into(),
            conid,
            underlying_conid: 1,
            expiration_date: ltd,
            ltd,
        };
        let list = vec![c(3, 20_270_120), c(1, 20_261_119), c(2, 20_261_218)];
        assert_eq!(front_month(&list, 20_261_110).unwrap().conid, 1);
        // Two days before the Nov contract's last trading day we are already on Dec.
        assert_eq!(front_month(&list, 20_261_119).unwrap().conid, 2);
        assert!(front_month(&list, 20_270_120).is_none());
    }
}
