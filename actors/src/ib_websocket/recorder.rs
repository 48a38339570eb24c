//! Recording of raw websocket frames (`ib.record_path`), for `marketlane replay`: one JSON
//! object per line, `{"received_ns":…,"text":"<frame>"}`, or `"base64"` for a frame that is
//! not UTF-8, so every byte the gateway sent can be fed through the normalizers again.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tracing::warn;

/// One recorded frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedFrame {
    pub received_ns: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
}

impl RecordedFrame {
    pub fn new(received_ns: i64, data: &[u8]) -> Self {
        match std::str::from_utf8(data) {
            Ok(t) => Self {
                received_ns,
                text: Some(t.to_string()),
                base64: None,
            },
            Err(_) => Self {
                received_ns,
                text: None,
                base64: Some(base64::engine::general_purpose::STANDARD.encode(data)),
            },
        }
    }

    /// The frame's bytes, as received.
    pub fn bytes(&self) -> Vec<u8> {
        match (&self.text, &self.base64) {
            (Some(t), _) => t.as_bytes().to_vec(),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .unwrap_or_else(|_| b.as_bytes().to_vec()),
            (None, None) => Vec::new(),
        }
    }
}

pub struct Recorder {
    path: PathBuf,
    out: BufWriter<File>,
    failed: bool,
}

impl Recorder {
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            failed: false,
        })
    }

    /// Appends one frame; a failing disk stops the recording, never the stream.
    pub fn write(&mut self, data: &[u8]) {
        if self.failed {
            return;
        }
        let rec = RecordedFrame::new(marketlane_protocol::now_ns(), data);
        let line = serde_json::to_string(&rec).unwrap_or_default();
        if let Err(e) = writeln!(self.out, "{line}").and_then(|()| self.out.flush()) {
            warn!(path = %self.path.display(), error = %e, "recording stopped");
            self.failed = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_including_non_utf8() {
        for data in [
            b"{\"topic\":\"system\",\"hb\":1}".to_vec(),
            vec![0xff, 0x00, 0x7b],
        ] {
            let rec = RecordedFrame::new(5, &data);
            let line = serde_json::to_string(&rec).unwrap();
            let back: RecordedFrame = serde_json::from_str(&line).unwrap();
            assert_eq!(back.bytes(), data);
        }
    }
}
