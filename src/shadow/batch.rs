//! A batch of shadow requests applied: the shadows it names loaded, each request applied
//! in order to what the ones before it left, and what changed committed at once, each
//! write guarded by what it was loaded as. When another replica changed one of the
//! shadows first, nothing is written and the batch runs again on what is stored now (a
//! request naming a version is then a 409, as it would have been had it come second).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::oneshot;
use weir_engine::Message;

use super::document::{self, Limits, Record};
use super::request::{self, ShadowError};
use super::store::{Expect, ShadowBackend, Write};
use super::topic::{Op, ShadowId};

/// How often a batch runs again when another replica changed one of its shadows first.
const RACES: usize = 8;

/// What a request came by, and where its answer goes.
pub enum Reply {
    /// A PUBLISH on a request topic: answers on `<topic>/<answer>`; acknowledged when
    /// the message is let go of.
    Mqtt(Arc<Message>),
    /// An HTTP request: its answer, and its MQTT answers on the shadow's topics.
    Http(oneshot::Sender<Result<Value, ShadowError>>),
}

/// One request.
pub struct Job {
    pub id: Result<ShadowId, ShadowError>,
    pub op: Op,
    pub payload: Bytes,
    pub reply: Reply,
    pub received: Instant,
}

/// A request's result: the messages it publishes (topic, payload) and what an HTTP caller
/// gets.
pub struct Done {
    pub op: Op,
    pub published: Vec<(String, Bytes)>,
    pub result: Result<Value, ShadowError>,
}

/// What requests are held to.
#[derive(Clone, Copy)]
pub struct Rules {
    pub limits: Limits,
    pub max_shadows: u64,
}

/// Applies `jobs` at `now` and commits what they changed; those `refused` names are
/// refused with its error instead. An error of the store fails the whole batch, with
/// nothing written.
pub async fn apply(
    store: &dyn ShadowBackend,
    jobs: &[Job],
    refused: &[Option<ShadowError>],
    now: u64,
    rules: Rules,
) -> anyhow::Result<Vec<Done>> {
    let mut ids: Vec<ShadowId> = jobs
        .iter()
        .zip(refused)
        .filter(|(_, r)| r.is_none())
        .filter_map(|(j, _)| j.id.clone().ok())
        .collect();
    ids.sort();
    ids.dedup();
    for _ in 0..RACES {
        let loaded = store.load(&ids).await?;
        let mut batch = Batch {
            loaded: &loaded,
            changed: HashMap::new(),
            added: 0,
            room: rules.max_shadows.saturating_sub(store.count()),
        };
        let done: Vec<Done> = jobs
            .iter()
            .zip(refused)
            .map(|(j, refused)| match refused {
                Some(e) => failed(j, e.clone(), now),
                None => batch.apply(j, now, rules.limits),
            })
            .collect();
        let writes: Vec<Write> = batch
            .changed
            .into_iter()
            .map(|(id, record)| Write {
                expect: Expect::of(loaded.get(&id)),
                id,
                record,
            })
            .collect();
        if writes.is_empty() || store.commit(&writes).await? {
            return Ok(done);
        }
        tracing::debug!("another replica changed a shadow of this batch first; running it again");
    }
    anyhow::bail!("another replica changed this batch's shadows first {RACES} times")
}

/// A batch's view of its shadows: as loaded, with what its requests changed.
struct Batch<'a> {
    loaded: &'a HashMap<ShadowId, Record>,
    changed: HashMap<ShadowId, Record>,
    /// Records the batch made that were not stored before.
    added: u64,
    /// How many more records `--max-shadows` allows.
    room: u64,
}

impl Batch<'_> {
    fn get(&self, id: &ShadowId) -> Option<&Record> {
        self.changed.get(id).or_else(|| self.loaded.get(id))
    }

    fn put(&mut self, id: &ShadowId, record: Record) {
        if self.get(id).is_none() {
            self.added += 1;
        }
        self.changed.insert(id.clone(), record);
    }

    /// One request applied to the batch's shadows.
    fn apply(&mut self, job: &Job, now: u64, limits: Limits) -> Done {
        let id = match &job.id {
            Ok(id) => id,
            Err(e) => return failed(job, e.clone(), now),
        };
        let stored = self.get(id).filter(|r| !r.expired(now)).cloned();
        let result = match job.op {
            Op::Get => request::parse_plain(&job.payload).and_then(|token| {
                document::get(stored.as_ref(), id.shown(), now, token.as_deref())
                    .map(|doc| vec![(answer_topic(job, "accepted"), doc)])
            }),
            Op::Delete => {
                let token = request::parse_plain(&job.payload).ok().flatten();
                document::delete(stored.as_ref(), id.shown(), now, token.as_deref()).map(
                    |(tombstone, accepted)| {
                        self.put(id, tombstone);
                        vec![(answer_topic(job, "accepted"), accepted)]
                    },
                )
            }
            Op::Update => request::parse_update(&job.payload)
                .and_then(|req| document::update(stored.as_ref(), &req, now, limits))
                .and_then(|u| {
                    if self.get(id).is_none() && self.added >= self.room {
                        return Err(ShadowError::new(
                            429,
                            "Too Many Requests: weir holds as many shadows as --max-shadows allows",
                        ));
                    }
                    self.put(id, u.record);
                    let mut out = vec![(answer_topic(job, "accepted"), u.accepted)];
                    if let Some(delta) = u.delta {
                        out.push((answer_topic(job, "delta"), delta));
                    }
                    out.push((answer_topic(job, "documents"), u.documents));
                    Ok(out)
                }),
        };
        match result {
            Ok(mut answers) => {
                // A get over HTTP is answered to its caller only, as on AWS.
                let quiet = job.op == Op::Get && matches!(job.reply, Reply::Http(_));
                let published = if quiet {
                    Vec::new()
                } else {
                    answers.iter().map(|(t, v)| (t.clone(), bytes(v))).collect()
                };
                Done {
                    op: job.op,
                    published,
                    result: Ok(answers.swap_remove(0).1),
                }
            }
            Err(e) => failed(job, e, now),
        }
    }
}

/// Where a request's answers go: `<request topic>/<answer>`.
fn answer_topic(job: &Job, answer: &str) -> String {
    match (&job.reply, &job.id) {
        (Reply::Mqtt(m), _) => format!("{}/{answer}", m.topic),
        (Reply::Http(_), Ok(id)) => id.answer(job.op, answer),
        (Reply::Http(_), Err(_)) => String::new(),
    }
}

/// A request refused: its `/rejected` (MQTT only: an HTTP caller gets the error).
pub fn failed(job: &Job, e: ShadowError, now: u64) -> Done {
    let published = match &job.reply {
        Reply::Mqtt(_) => {
            let token = request::token_of(&job.payload);
            let v = document::rejected(&e, now, token.as_deref());
            vec![(answer_topic(job, "rejected"), bytes(&v))]
        }
        Reply::Http(_) => Vec::new(),
    };
    Done {
        op: job.op,
        published,
        result: Err(e),
    }
}

fn bytes(v: &Value) -> Bytes {
    Bytes::from(v.to_string())
}
