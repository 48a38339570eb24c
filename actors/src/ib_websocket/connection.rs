//! Opening the gateway websocket: cookie authentication, TLS that accepts the gateway's
//! self-signed certificate when configured to, and the reader task that feeds frames to the
//! actor one permit at a time.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use ractor::ActorRef;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::actor::WsMsg;
use crate::backpressure::InflightLimit;

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

fn tls_connector(accept_invalid_certs: bool) -> Option<Connector> {
    if !accept_invalid_certs {
        return None;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptGatewayCert(provider)))
        .with_no_client_auth();
    Some(Connector::Rustls(Arc::new(config)))
}

/// Connects and authenticates with the session cookie the gateway expects (`api={"session":…}`,
/// as ibind sends it; the gateway also accepts `x-sess-uuid`).
pub async fn connect(
    url: &str,
    session: &str,
    accept_invalid_certs: bool,
    timeout: Duration,
) -> Result<WsStream, ConnectError> {
    let mut request = url
        .into_client_request()
        .map_err(|_| ConnectError::Url(url.to_string()))?;
    let cookie = format!(
        "api={}; x-sess-uuid={session}",
        serde_json::json!({ "session": session })
    );
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        request.headers_mut().insert("Cookie", v);
    }
    let connecting = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        tls_connector(accept_invalid_certs),
    );
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

/// Reads frames until the socket ends, taking one in-flight permit per frame first so a slow
/// Kafka stops the reading (backpressure) instead of filling the actor's mailbox.
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
