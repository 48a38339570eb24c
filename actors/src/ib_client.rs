//! REST client of the IB Client Portal gateway: session endpoints and contract lookup, paced
//! under IB's limits (10 req/s global, 1/s for `/tickle`) so that we never earn a 429.

use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use marketlane_protocol::ib::{
    AccountsResponse, AuthStatus, FuturesResponse, SecdefSearchResult, StocksResponse,
    TickleResponse,
};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;

use crate::config::IbConfig;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum IbError {
    #[error("gateway unreachable at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("no brokerage session: {0}")]
    NoSession(String),
    /// `400 no bridge`: `ssodh/init` has not been called.
    #[error("no bridge: the brokerage session needs ssodh/init")]
    NoBridge,
    #[error("rate limited by the gateway (429) on {0}")]
    RateLimited(String),
    #[error("gateway error {status} on {endpoint}: {body}")]
    Status {
        endpoint: String,
        status: u16,
        body: String,
    },
    #[error("unexpected reply from {endpoint}: {message}")]
    BadReply { endpoint: String, message: String },
}

impl IbError {
    /// Whether trying again later can help (as opposed to needing a login or a fix).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::NoSession(_))
    }
}

pub struct IbClient {
    http: reqwest::Client,
    config: IbConfig,
    global: DefaultDirectRateLimiter,
    tickle: DefaultDirectRateLimiter,
    metrics: Arc<Metrics>,
}

impl IbClient {
    pub fn new(config: IbConfig, metrics: Arc<Metrics>) -> Result<Self, IbError> {
        let http = reqwest::Client::builder()
            .cookie_store(true)
            .danger_accept_invalid_certs(config.accept_invalid_certs)
            .timeout(config.request_timeout)
            .user_agent("marketlane")
            .build()
            .map_err(|e| IbError::Unreachable {
                url: config.gateway_url.clone(),
                message: e.to_string(),
            })?;
        // IB counts requests in sliding windows (10 per second, 1 tickle per second). A bursty
        // limiter could put 2× the rate into one window, and transit jitter can bring two
        // requests closer at the gateway than we sent them: space every request evenly, with
        // a margin.
        let spaced = |ms: u64| {
            Quota::with_period(std::time::Duration::from_millis(ms))
                .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
                .allow_burst(NonZeroU32::MIN)
        };
        Ok(Self {
            http,
            global: RateLimiter::direct(spaced(125)),
            tickle: RateLimiter::direct(spaced(1_100)),
            config,
            metrics,
        })
    }

    pub fn config(&self) -> &IbConfig {
        &self.config
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<T, IbError> {
        self.global.until_ready().await;
        let url = self.config.api_url(path);
        let mut req = self.http.request(method, &url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let endpoint = path.split('?').next().unwrap_or(path).to_string();
        let outcome = |o: &str| {
            self.metrics
                .ib_requests
                .with_label_values(&[endpoint.as_str(), o])
                .inc();
        };
        let resp = req.send().await.map_err(|e| {
            outcome("unreachable");
            IbError::Unreachable {
                url: url.clone(),
                message: e.to_string(),
            }
        })?;
        let status = resp.status();
        let text = resp.text().await.map_err(|e| IbError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
        match status {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => {
                outcome("no_session");
                return Err(IbError::NoSession(text));
            }
            StatusCode::TOO_MANY_REQUESTS => {
                outcome("rate_limited");
                return Err(IbError::RateLimited(endpoint));
            }
            StatusCode::BAD_REQUEST if text.contains("no bridge") => {
                outcome("no_bridge");
                return Err(IbError::NoBridge);
            }
            s => {
                outcome("error");
                return Err(IbError::Status {
                    endpoint,
                    status: s.as_u16(),
                    body: text.chars().take(200).collect(),
                });
            }
        }
        outcome("ok");
        serde_json::from_str(&text).map_err(|e| IbError::BadReply {
            endpoint,
            message: format!("{e}: {}", text.chars().take(200).collect::<String>()),
        })
    }

    pub async fn tickle(&self) -> Result<TickleResponse, IbError> {
        self.tickle.until_ready().await;
        let t: TickleResponse = self.call(reqwest::Method::POST, "/tickle", None).await?;
        if let Some(e) = &t.error {
            return Err(IbError::NoSession(e.clone()));
        }
        Ok(t)
    }

    pub async fn auth_status(&self) -> Result<AuthStatus, IbError> {
        self.call(reqwest::Method::POST, "/iserver/auth/status", None)
            .await
    }

    pub async fn ssodh_init(&self) -> Result<AuthStatus, IbError> {
        self.call(
            reqwest::Method::POST,
            "/iserver/auth/ssodh/init",
            Some(serde_json::json!({"publish": true, "compete": true})),
        )
        .await
    }

    /// Asks the gateway to re-authenticate the brokerage session; the reply shape varies
    /// (`{"message":"triggered"}` or an auth status), so it is not interpreted.
    pub async fn reauthenticate(&self) -> Result<(), IbError> {
        self.call::<serde_json::Value>(reqwest::Method::POST, "/iserver/reauthenticate", None)
            .await
            .map(|_| ())
    }

    pub async fn accounts(&self) -> Result<AccountsResponse, IbError> {
        self.call(reqwest::Method::GET, "/iserver/accounts", None)
            .await
    }

    pub async fn stocks(&self, symbols: &[String]) -> Result<StocksResponse, IbError> {
        let q = symbols.join(",");
        self.call(
            reqwest::Method::GET,
            &format!("/trsrv/stocks?symbols={q}"),
            None,
        )
        .await
    }

    pub async fn futures(&self, roots: &[String]) -> Result<FuturesResponse, IbError> {
        let q = roots.join(",");
        self.call(
            reqwest::Method::GET,
            &format!("/trsrv/futures?symbols={q}"),
            None,
        )
        .await
    }

    pub async fn secdef_search(
        &self,
        symbol: &str,
        sec_type: &str,
    ) -> Result<Vec<SecdefSearchResult>, IbError> {
        self.call(
            reqwest::Method::POST,
            "/iserver/secdef/search",
            Some(serde_json::json!({"symbol": symbol, "name": false, "secType": sec_type})),
        )
        .await
    }
}
