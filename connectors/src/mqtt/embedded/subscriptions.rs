//! SUBSCRIBE and UNSUBSCRIBE: each filter checked (a valid filter or shared
//! subscription, within the client's maximum of subscriptions, allowed by the ACL), kept
//! in the client's session and in the routing trie the router reads ([`Sub`]), and the
//! retained messages a new subscription gets once the SUBACK is out. A session that
//! ends takes its subscriptions out of the trie.

use std::sync::Arc;

use weir_engine::topic::validate_filter;

use super::access::Want;
use super::broker::{Broker, lock};
use super::client::Conn;
use super::connection::send;
use super::delivery::Delivery;
use super::error::ClientError;
use super::session::Session;
use super::subscription::{Sub, SubOptions, shared};
use super::wire::{Outbound, SubRefusal, SubRequest};

impl Broker {
    pub(super) async fn subscribe(
        &self,
        c: &mut Conn,
        pkid: u16,
        filters: Vec<SubRequest>,
        id: Option<u32>,
    ) -> Result<(), ClientError> {
        let max_subscriptions = self.inner.limits.max_subscriptions;
        let mut granted = Vec::with_capacity(filters.len());
        // Filters that get the retained messages they match, once the SUBACK is out.
        let mut retained_for = Vec::new();
        for req in filters {
            let split = shared(&req.filter);
            let inner = match split {
                Ok(Some((_, f))) => f,
                _ => req.filter.as_str(),
            };
            let refusal = {
                let s = lock(&c.session);
                let full = s.subscriptions.len() >= max_subscriptions
                    && !s.subscriptions.contains_key(req.filter.as_str());
                if split.is_err() || validate_filter(inner).is_err() {
                    Some(SubRefusal::Invalid)
                } else if full {
                    Some(SubRefusal::Quota)
                } else if !self.allows(
                    c.peer.principal.as_deref(),
                    &c.peer.client_id,
                    Want::Subscribe,
                    inner,
                ) {
                    Some(SubRefusal::NotAuthorized)
                } else {
                    None
                }
            };
            if let Some(refusal) = refusal {
                self.inner
                    .metrics
                    .broker_subscriptions_refused
                    .with_label_values(&[match refusal {
                        SubRefusal::Invalid => "invalid",
                        SubRefusal::Quota => "max_subscriptions",
                        SubRefusal::NotAuthorized => "not_authorized",
                    }])
                    .inc();
                granted.push(Err(refusal));
                continue;
            }
            let opts = SubOptions {
                qos: req.qos.min(2),
                no_local: req.no_local,
                retain_as_published: req.retain_as_published,
                id,
            };
            let full: Arc<str> = Arc::from(req.filter.as_str());
            let group = match split {
                Ok(Some((g, _))) => Some(Arc::from(g)),
                _ => None,
            };
            let existed = {
                let mut s = lock(&c.session);
                let existed = s.subscriptions.insert(full.clone(), opts).is_some();
                self.changed(&s);
                let mut subs = self.trie_mut();
                let sub = Sub {
                    client: c.peer.client_id.clone(),
                    filter: full,
                    group: group.clone(),
                    opts,
                };
                // Subscribing again replaces the options.
                subs.remove(inner, &sub);
                subs.insert(inner, sub);
                existed
            };
            let wants_retained = match req.retain_handling {
                0 => true,
                1 => !existed,
                _ => false,
            };
            // Shared subscriptions get no retained messages (MQTT 5 §4.8.2).
            if wants_retained && group.is_none() {
                retained_for.push((inner.to_owned(), opts));
            }
            granted.push(Ok(opts.qos));
        }
        send(&mut c.wire, Outbound::SubAck { pkid, granted }).await?;
        for (filter, opts) in retained_for {
            let matching = lock(&self.inner.retained).matching(&filter);
            for (topic, r) in matching {
                let d = Delivery {
                    topic,
                    payload: r.payload,
                    qos: r.qos.min(opts.qos),
                    retain: true,
                    properties: r.properties,
                    expires_at: r.expires_at,
                    subscription_ids: opts.id.into_iter().collect(),
                };
                self.offer(&c.session, d);
            }
        }
        Ok(())
    }

    /// UNSUBSCRIBE: the filters the client no longer wants, out of its session and the
    /// routing trie; an UNSUBACK either way.
    pub(super) async fn unsubscribe(
        &self,
        c: &mut Conn,
        pkid: u16,
        filters: Vec<String>,
    ) -> Result<(), ClientError> {
        {
            let mut s = lock(&c.session);
            let mut subs = self.trie_mut();
            self.changed(&s);
            for f in &filters {
                if let Some((full, opts)) = s.subscriptions.remove_entry(f.as_str()) {
                    let (group, inner) = match shared(f) {
                        Ok(Some((g, inner))) => (Some(Arc::from(g)), inner),
                        _ => (None, f.as_str()),
                    };
                    subs.remove(
                        inner,
                        &Sub {
                            client: c.peer.client_id.clone(),
                            filter: full,
                            group,
                            opts,
                        },
                    );
                }
            }
        }
        send(
            &mut c.wire,
            Outbound::UnsubAck {
                pkid,
                count: filters.len(),
            },
        )
        .await?;
        Ok(())
    }

    /// Takes every subscription of a session that ends out of the session and the
    /// routing trie.
    pub(super) fn drop_subscriptions(&self, s: &mut Session) {
        let mut subs = self.trie_mut();
        for (filter, _) in std::mem::take(&mut s.subscriptions) {
            let (group, inner) = match shared(&filter) {
                Ok(Some((g, f))) => (Some(Arc::from(g)), f.to_owned()),
                _ => (None, filter.to_string()),
            };
            subs.remove(
                &inner,
                &Sub {
                    client: s.client_id.clone(),
                    filter: filter.clone(),
                    group,
                    opts: SubOptions {
                        qos: 0,
                        no_local: false,
                        retain_as_published: false,
                        id: None,
                    },
                },
            );
        }
    }
}
