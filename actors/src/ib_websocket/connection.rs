//! Opening the gateway websocket: cookie authentication (ibind's `api` cookie plus the cookies
//! the gateway set on REST answers), TLS that verifies the gateway against `ib.ca_file` or
//! accepts its self-signed certificate when configured to, and the reader task that feeds
//! frames to the actor one permit at a time.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::actor::WsMsg;
use crate::backpressure::InflightLimit;
use crate::config::IbConfig;
use crate::ib_client::{cookie_header, read_ca_file};

pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
pub type WsSink = SplitSink<WsStream, Message>;

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("bad websocket url {0}")]
    Url(String),
    #[error("websocket connect to {url} timed out after {after:?}")]
    Timeout { url: String, after: Duration },
    #[error("websocket connect to {url}: {message}")]
    Failed { url: String, message: String },
}

/// Accepts any server certificate: the gateway listens on localhost with a self-signed one
/// (IB ships `vertx.jks`), and `accept_invalid_certs` says so explicitly.
#[derive(Debug)]
struct AcceptGatewayCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptGatewayCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// TLS for `wss://`: the gateway's own certificate from `ib.ca_file` when set, else any
/// certificate when `accept_invalid_certs`, else the system's roots (tungstenite's default).
fn tls_connector(ib: &IbConfig) -> Result<Option<Connector>, ConnectError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let failed = |message: String| ConnectError::Failed {
        url: ib.websocket_url(),
        message,
    };
    if let Some(path) = &ib.ca_file {
        let pem = read_ca_file(path).map_err(|e| failed(e.to_string()))?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| failed(format!("{}: {e}", path.display())))?;
            roots
                .add(cert)
                .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        }
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| failed(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        return Ok(Some(Connector::Rustls(Arc::new(config))));
    }
    if !ib.accept_invalid_certs {
        return Ok(None);
    }
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()
        .map(|b| {
            b.dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptGatewayCert(provider)))
                .with_no_client_auth()
        });
    Ok(config.map(|c| Connector::Rustls(Arc::new(c))))
}

/// The handshake's `Cookie`: ibind's `api={"session":"<tickle session>"}`
/// (`ibind/client/ibkr_ws_client.py` `_get_cookie`), then every cookie the gateway set for this
/// URL, as it set them (`x-sess-uuid` is the gateway's own cookie, not the tickle session).
pub fn handshake_cookie(session: &str, gateway_cookies: Option<&str>) -> String {
    let api = format!("api={}", serde_json::json!({ "session": session }));
    match gateway_cookies.filter(|c| !c.trim().is_empty()) {
        Some(c) => format!("{api}; {c}"),
        None => api,
    }
}

/// Connects and authenticates with the cookies the gateway expects (see [`handshake_cookie`]);
/// a gateway that still says "waiting for session" gets the `{"session":…}` frame from the actor.
pub async fn connect(
    url: &str,
    session: &str,
    ib: &IbConfig,
    timeout: Duration,
) -> Result<WsStream, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| ConnectError::Url(url.to_string()))?;
    let jar = cookie_header(&ib.gateway_url, url);
    let cookie = handshake_cookie(session, jar.as_deref());
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        request.headers_mut().insert("Cookie", v);
    }
    let connecting =
        tokio_tungstenite::connect_async_tls_with_config(request, None, false, tls_connector(ib)?);
    match tokio::time::timeout(timeout, connecting).await {
        Err(_) => Err(ConnectError::Timeout {
            url: url.to_string(),
            after: timeout,
        }),
        Ok(Err(e)) => Err(ConnectError::Failed {
            url: url.to_string(),
            message: e.to_string(),
        }),
        Ok(Ok((stream, _))) => Ok(stream),
    }
}

/// Reads frames until the socket ends, taking one in-flight permit per frame first and then its
/// bytes, so a slow Kafka stops the reading (backpressure) instead of filling the actor's
/// mailbox.
pub fn spawn_reader(
    mut stream: SplitStream<WsStream>,
    actor: ActorRef<WsMsg>,
    generation: u64,
    inflight: InflightLimit,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let reason = loop {
            let Some(permit) = inflight.acquire().await else {
                break "in-flight pool closed".to_string();
            };
            let data: Vec<u8> = match stream.next().await {
                None => break "socket ended".to_string(),
                Some(Err(e)) => break e.to_string(),
                Some(Ok(Message::Close(frame))) => {
                    break format!("close frame: {frame:?}");
                }
                Some(Ok(Message::Text(t))) => Utf8Bytes::as_str(&t).as_bytes().to_vec(),
                Some(Ok(Message::Binary(b))) => b.to_vec(),
                Some(Ok(_)) => continue,
            };
            let Some(permit) = inflight.charge(permit, data.len()).await else {
                break "in-flight pool closed".to_string();
            };
            if actor
                .cast(WsMsg::Frame {
                    generation,
                    data,
                    permit,
                })
                .is_err()
            {
                return;
            }
        };
        let _ = actor.cast(WsMsg::Disconnected { generation, reason });
    })
}

pub async fn send_text(sink: &mut WsSink, text: String) -> Result<(), String> {
    sink.send(Message::Text(text.into()))
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_sends_the_api_cookie_and_the_gateways_own_cookies() {
        assert_eq!(handshake_cookie("abc", None), r#"api={"session":"abc"}"#);
        let c = handshake_cookie("abc", Some("x-sess-uuid=0.1a2b3c4d.1695377857.47099b9d"));
        assert_eq!(
            c,
            r#"api={"session":"abc"}; x-sess-uuid=0.1a2b3c4d.1695377857.47099b9d"#
        );
        assert!(
            !c.contains("x-sess-uuid=abc"),
            "the tickle session is not x-sess-uuid"
        );
    }
}
