//! What the embedded broker keeps across restarts, in files of its directory
//! (`<data dir>/broker/`), each replaced atomically (written aside, synced, renamed):
//!
//! * `sessions.json`: every persistent session (client id, expiry, subscriptions),
//!   written within [`AUTOSAVE`] of a change, so a crash loses at most that much;
//! * `retained.json`: the retained messages, written at most every [`RETAINED_AUTOSAVE`];
//! * `queues.json`: the messages queued and in flight for each session, written when weir
//!   stops and read (then removed) at the next start. After a crash there is none: the
//!   messages waiting for clients that were away are lost, as in Mosquitto between its
//!   autosaves; everything else above survives.
//!
//! A file that cannot be read is set aside (`<name>.corrupt-<ms>`), logged and counted,
//! and the broker starts without it rather than not at all.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use weir_engine::{MqttProperties, now_ms};

use super::delivery::Delivery;
use super::retained::Retained;
use super::subscription::SubOptions;

/// How soon a change of sessions or subscriptions is on disk.
pub const AUTOSAVE: Duration = Duration::from_millis(100);
/// How often retained messages are written, at most.
pub const RETAINED_AUTOSAVE: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
pub struct SavedSession {
    pub client_id: String,
    /// Seconds the session outlives its connection (`u32::MAX`: for ever).
    pub expiry: u32,
    pub subscriptions: Vec<SavedSub>,
}

#[derive(Serialize, Deserialize)]
pub struct SavedSub {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default)]
    pub id: Option<u32>,
}

impl SavedSub {
    pub fn new(filter: &str, o: &SubOptions) -> Self {
        Self {
            filter: filter.to_owned(),
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            id: o.id,
        }
    }

    pub fn options(&self) -> SubOptions {
        SubOptions {
            qos: self.qos.min(2),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            id: self.id,
        }
    }
}

/// A message as saved: the payload in base64, expiry as a wall-clock time.
#[derive(Serialize, Deserialize)]
pub struct SavedMessage {
    pub topic: String,
    pub payload: String,
    pub qos: u8,
    #[serde(default)]
    pub retain: bool,
    #[serde(default)]
    pub properties: Option<SavedProperties>,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub expires_at_ms: Option<i64>,
    #[serde(default)]
    pub subscription_ids: Vec<u32>,
}

#[derive(Serialize, Deserialize)]
pub struct SavedProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<String>,
    pub user_properties: Vec<(String, String)>,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn to_wall(t: Option<Instant>) -> Option<i64> {
    t.map(|t| {
        let left = t.saturating_duration_since(Instant::now());
        now_ms() + i64::try_from(left.as_millis()).unwrap_or(i64::MAX / 2)
    })
}

fn from_wall(ms: Option<i64>) -> Option<Instant> {
    ms.map(|ms| {
        let left = u64::try_from(ms - now_ms()).unwrap_or(0);
        Instant::now()
            .checked_add(Duration::from_millis(left))
            .unwrap_or_else(Instant::now)
    })
}

fn save_properties(p: &Option<Arc<MqttProperties>>) -> Option<SavedProperties> {
    p.as_ref().map(|p| SavedProperties {
        payload_format_indicator: p.payload_format_indicator,
        content_type: p.content_type.clone(),
        response_topic: p.response_topic.clone(),
        correlation_data: p.correlation_data.as_ref().map(|d| b64().encode(d)),
        user_properties: p.user_properties.clone(),
    })
}

fn load_properties(p: Option<SavedProperties>) -> Option<Arc<MqttProperties>> {
    p.map(|p| {
        Arc::new(MqttProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type,
            response_topic: p.response_topic,
            correlation_data: p
                .correlation_data
                .and_then(|d| b64().decode(d).ok())
                .map(Bytes::from),
            user_properties: p.user_properties,
        })
    })
}

impl SavedMessage {
    pub fn from_delivery(d: &Delivery) -> Self {
        Self {
            topic: d.topic.to_string(),
            payload: b64().encode(&d.payload),
            qos: d.qos,
            retain: d.retain,
            properties: save_properties(&d.properties),
            expires_at_ms: to_wall(d.expires_at),
            subscription_ids: d.subscription_ids.clone(),
        }
    }

    pub fn into_delivery(self) -> Option<Delivery> {
        Some(Delivery {
            topic: Arc::from(self.topic),
            payload: Bytes::from(b64().decode(self.payload).ok()?),
            qos: self.qos.min(2),
            retain: self.retain,
            properties: load_properties(self.properties),
            expires_at: from_wall(self.expires_at_ms),
            subscription_ids: self.subscription_ids,
        })
    }

    pub fn from_retained(topic: &str, r: &Retained) -> Self {
        Self {
            topic: topic.to_owned(),
            payload: b64().encode(&r.payload),
            qos: r.qos,
            retain: true,
            properties: save_properties(&r.properties),
            expires_at_ms: to_wall(r.expires_at),
            subscription_ids: Vec::new(),
        }
    }

    pub fn into_retained(self) -> Option<(String, Retained)> {
        let payload = Bytes::from(b64().decode(&self.payload).ok()?);
        Some((
            self.topic,
            Retained {
                payload,
                qos: self.qos.min(2),
                properties: load_properties(self.properties),
                expires_at: from_wall(self.expires_at_ms),
            },
        ))
    }
}

/// One session's messages, for `queues.json`.
#[derive(Serialize, Deserialize)]
pub struct SavedQueue {
    pub client_id: String,
    /// Sent and not acknowledged: `(packet id, message)`, or `(packet id, None)` for a
    /// QoS 2 message released and waiting for PUBCOMP.
    pub inflight: Vec<(u16, Option<SavedMessage>)>,
    pub pending: Vec<SavedMessage>,
}

/// The broker's directory of saved state.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Reads a saved file; `None` when there is none. One that cannot be read is set
    /// aside, logged and counted in `corrupt`.
    pub fn read<T: for<'de> Deserialize<'de>>(&self, name: &str, corrupt: &mut u64) -> Option<T> {
        let path = self.path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(file = %path.display(), error = %e, "cannot read the broker's saved state");
                *corrupt += 1;
                return None;
            }
        };
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(e) => {
                let aside = path.with_extension(format!("json.corrupt-{}", now_ms()));
                let _ = std::fs::rename(&path, &aside);
                tracing::error!(
                    file = %path.display(),
                    moved_to = %aside.display(),
                    error = %e,
                    "the broker's saved state is damaged; starting without it"
                );
                *corrupt += 1;
                None
            }
        }
    }

    /// Replaces a saved file atomically.
    pub fn write<T: Serialize>(&self, name: &str, value: &T) -> std::io::Result<()> {
        use std::io::Write as _;
        std::fs::create_dir_all(&self.dir)?;
        let path = self.path(name);
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        serde_json::to_writer(&mut f, value)?;
        f.flush()?;
        f.sync_data()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    pub fn remove(&self, name: &str) {
        let _ = std::fs::remove_file(self.path(name));
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_survive_saving_with_their_properties_and_expiry() {
        let d = Delivery {
            topic: Arc::from("a/b"),
            payload: Bytes::from_static(b"\x00\xffbinary"),
            qos: 1,
            retain: true,
            properties: Some(Arc::new(MqttProperties {
                payload_format_indicator: Some(1),
                content_type: Some("x".into()),
                response_topic: None,
                correlation_data: Some(Bytes::from_static(b"\x01")),
                user_properties: vec![("k".into(), "v".into())],
            })),
            expires_at: Instant::now().checked_add(Duration::from_secs(60)),
            subscription_ids: vec![7],
        };
        let text = serde_json::to_string(&SavedMessage::from_delivery(&d)).unwrap();
        let back = serde_json::from_str::<SavedMessage>(&text)
            .unwrap()
            .into_delivery()
            .unwrap();
        assert_eq!(back.payload, d.payload);
        assert_eq!(back.properties, d.properties);
        assert_eq!(back.subscription_ids, [7]);
        let left = back.expires_at.unwrap() - Instant::now();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
    }

    #[test]
    fn a_damaged_file_is_set_aside_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path().to_owned());
        let mut corrupt = 0;
        assert!(
            store
                .read::<Vec<SavedSession>>("sessions.json", &mut corrupt)
                .is_none()
        );
        assert_eq!(corrupt, 0);
        store
            .write("sessions.json", &Vec::<SavedSession>::new())
            .unwrap();
        assert!(
            store
                .read::<Vec<SavedSession>>("sessions.json", &mut corrupt)
                .is_some()
        );
        std::fs::write(dir.path().join("sessions.json"), b"{half").unwrap();
        assert!(
            store
                .read::<Vec<SavedSession>>("sessions.json", &mut corrupt)
                .is_none()
        );
        assert_eq!(corrupt, 1);
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
    }
}
