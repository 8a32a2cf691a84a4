//! [`RawPublisher`]: a hand-driven QUIC client with a real publisher certificate, for the
//! scenarios a well-behaved publisher never produces (frames for another worker, random
//! bytes, stray streams).

use std::net::SocketAddr;

use kvroute_core::wire::{encode, Frame, FrameDecoder, Hello, Subscribe, VERSION};
use kvroute_core::RankKey;
use kvroute_net::tls::TlsFiles;

pub struct RawPublisher {
    _endpoint: quinn::Endpoint,
    pub conn: quinn::Connection,
    /// Kept open: finishing it is not a goodbye, but dropping the connection is.
    _control: Option<quinn::SendStream>,
}

pub fn bytes_of(frames: &[Frame]) -> Vec<u8> {
    let mut bytes = Vec::new();
    for frame in frames {
        encode(frame, &mut bytes).unwrap();
    }
    bytes
}

/// Bytes that are not a frame (no "KR" magic), from a fixed seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes: Vec<u8> = (0..len)
        .map(|_| {
            state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (state >> 56) as u8
        })
        .collect();
    bytes[0] = b'X';
    bytes
}

impl RawPublisher {
    /// Connects with the publisher certificate `files` and sends `Hello` for `ranks`.
    pub async fn connect(files: &TlsFiles, router: SocketAddr, ranks: Vec<RankKey>) -> Self {
        let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        endpoint.set_default_client_config(files.client_config().unwrap());
        let conn = endpoint.connect(router, "localhost").unwrap().await.unwrap();
        let mut control = conn.open_uni().await.unwrap();
        let hello = Frame::Hello(Hello { max_version: VERSION, incarnation: 99, publisher_name: "raw".into(), ranks });
        control.write_all(&bytes_of(&[hello])).await.unwrap();
        RawPublisher { _endpoint: endpoint, conn, _control: Some(control) }
    }

    /// Waits for the router to open a rank stream; returns its `Subscribe` and the stream
    /// to answer on.
    pub async fn next_subscription(&self) -> (Subscribe, quinn::SendStream) {
        let (send, mut recv) = self.conn.accept_bi().await.unwrap();
        let bytes = recv.read_to_end(1024).await.unwrap();
        let mut decoder = FrameDecoder::new();
        let mut input = &bytes[..];
        match decoder.decode(&mut input).unwrap() {
            Some(Frame::Subscribe(subscribe)) => (subscribe, send),
            other => panic!("expected Subscribe, got {other:?}"),
        }
    }

    /// Opens a unidirectional stream and writes `bytes` on it.
    pub async fn stray_stream(&self, bytes: &[u8]) {
        let mut stream = self.conn.open_uni().await.unwrap();
        stream.write_all(bytes).await.unwrap();
        stream.finish().unwrap();
    }
}
