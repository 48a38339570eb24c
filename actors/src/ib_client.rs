//! REST client of the IB Client Portal gateway: session endpoints and contract lookup, paced
//! under IB's limits (10 req/s global, 1/s for `/tickle`) so that we never earn a 429.
//!
//! Cookies: the gateway sets its own (`x-sess-uuid` on API answers, `HttpOnly; secure`, as a
//! real gateway answers `GET /v1/api/trsrv/stocks`: gabrielbussolo/ibkr-api-gateway README;
//! by `/tickle`, path `/v1/api`: machdat/broker-gateway
//! `docs/research/ibkr-cpapi-websockets-findings.md`). They live in one cookie jar per gateway
//! URL, which REST sends back and the websocket handshake reads ([`cookie_header`]).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, LazyLock, Mutex};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use marketlane_protocol::ib::{
    AccountsResponse, AuthStatus, FuturesResponse, SecdefSearchResult, StocksResponse,
    TickleResponse,
};
use reqwest::StatusCode;
use reqwest::cookie::{CookieStore, Jar};
use serde::de::DeserializeOwned;

use crate::config::IbConfig;
use crate::metrics::Metrics;

#[derive(Debug, thiserror::Error)]
pub enum IbError {
    /// The connection could not be made (the port refuses, nothing listens).
    #[error("gateway refused the connection at {url}: {message}")]
    Refused { url: String, message: String },
    /// Connected, but no (complete) answer in time.
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
    /// The client cannot be built from the config (e.g. an unreadable `ib.ca_file`).
    #[error("ib client config: {0}")]
    Config(String),
}

/// The error and its sources: reqwest's own message ("error sending request") hides whether
/// the connection was refused or timed out.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

impl IbError {
    /// Whether trying again later can help (as opposed to needing a login or a fix).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::NoSession(_) | Self::Config(_))
    }
}

/// The cookie jar of each gateway this process talks to, shared by REST and the websocket.
/// Keyed by gateway URL: the session actor and the websocket actor each build their own client
/// from the same `IbConfig`, and both must send back what the gateway set.
static JARS: LazyLock<Mutex<HashMap<String, Arc<Jar>>>> = LazyLock::new(Default::default);

fn jar(gateway_url: &str) -> Arc<Jar> {
    let key = gateway_url.trim_end_matches('/').to_string();
    JARS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key)
        .or_default()
        .clone()
}

/// The `Cookie` header value for `url` (http(s) or ws(s)) from the gateway's cookie jar:
/// exactly the cookies the gateway set and their rules (path, `Secure`) allow for `url`.
pub fn cookie_header(gateway_url: &str, url: &str) -> Option<String> {
    let http_url = if let Some(rest) = url.strip_prefix("wss://") {
        format!("https://{rest}")
    } else if let Some(rest) = url.strip_prefix("ws://") {
        format!("http://{rest}")
    } else {
        url.to_string()
    };
    let parsed = reqwest::Url::parse(&http_url).ok()?;
    jar(gateway_url)
        .cookies(&parsed)
        .and_then(|v| v.to_str().ok().map(str::to_owned))
}

/// The gateway's certificate (or its CA) from `ib.ca_file`, PEM.
pub fn read_ca_file(path: &std::path::Path) -> Result<Vec<u8>, IbError> {
    std::fs::read(path)
        .map_err(|e| IbError::Config(format!("cannot read ib.ca_file {}: {e}", path.display())))
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
        let build_error =
            |e: reqwest::Error| IbError::Config(format!("cannot build the http client: {e}"));
        let mut builder = reqwest::Client::builder()
            .cookie_provider(jar(&config.gateway_url))
            .timeout(config.request_timeout)
            .user_agent("marketlane");
        builder = match &config.ca_file {
            // Verify the gateway against its own certificate only.
            Some(path) => {
                let pem = read_ca_file(path)?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(build_error)?;
                builder.tls_certs_only(certs)
            }
            None => builder.danger_accept_invalid_certs(config.accept_invalid_certs),
        };
        let http = builder.build().map_err(build_error)?;
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
        let mut req = self.http.request(method.clone(), &url);
        if let Some(b) = body {
            req = req.json(&b);
        } else if method == reqwest::Method::POST {
            // An empty POST states its length: servers and proxies may answer 411 to a POST
            // without one (Akamai does: OpenNTF/SocialSDK#1768; IB's API answers carry
            // Akamai's `Server-Timing: ak_p`, gabrielbussolo/ibkr-api-gateway README).
            req = req
                .header(reqwest::header::CONTENT_LENGTH, "0")
                .body(Vec::<u8>::new());
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
            let message = error_chain(&e);
            if e.is_connect() && !e.is_timeout() {
                IbError::Refused {
                    url: url.clone(),
                    message,
                }
            } else {
                IbError::Unreachable {
                    url: url.clone(),
                    message,
                }
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

    /// Opens the brokerage session. `compete` is `ib.compete` (false by default): `true`
    /// "determines if other brokerage sessions should be disconnected to prioritize this
    /// connection" (Voyz/ibind `session_mixin.py` `initialize_brokerage_session`), i.e. kicks
    /// a person's TWS or portal login of the same user.
    pub async fn ssodh_init(&self) -> Result<AuthStatus, IbError> {
        self.call(
            reqwest::Method::POST,
            "/iserver/auth/ssodh/init",
            Some(serde_json::json!({"publish": true, "compete": self.config.compete})),
        )
        .await
    }

    /// Asks the gateway to re-authenticate the brokerage session; the reply shape varies
    /// (`{"message":"triggered"}` or an auth status), so it is not interpreted. `force=true`
    /// (ibeam's default route) kicks competitors, so only with `ib.compete`.
    pub async fn reauthenticate(&self) -> Result<(), IbError> {
        let path = if self.config.compete {
            "/iserver/reauthenticate?force=true"
        } else {
            "/iserver/reauthenticate"
        };
        self.call::<serde_json::Value>(reqwest::Method::POST, path, None)
            .await
            .map(|_| ())
    }

    /// Ends the SSO session at the gateway (the last rung before a restart and a new login).
    pub async fn logout(&self) -> Result<(), IbError> {
        self.call::<serde_json::Value>(reqwest::Method::POST, "/logout", None)
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
