//! One subscription: its options ([`SubOptions`]), as a session keeps them by filter and
//! as the routing trie holds them ([`Sub`], keyed by the filter without any
//! `$share/<group>/`), and a shared subscription's filter split into its group and its
//! filter ([`shared`]).

use std::sync::Arc;

/// The options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOptions {
    /// The QoS granted.
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// MQTT 5's Subscription Identifier.
    pub id: Option<u32>,
}

/// One subscription in the routing trie (keyed by its topic filter, without any
/// `$share/<group>/`).
#[derive(Clone)]
pub struct Sub {
    pub client: Arc<str>,
    /// The filter as subscribed, with any `$share/<group>/`: the key in the session.
    pub filter: Arc<str>,
    pub group: Option<Arc<str>>,
    pub opts: SubOptions,
}

impl PartialEq for Sub {
    fn eq(&self, other: &Self) -> bool {
        self.client == other.client && self.filter == other.filter
    }
}

/// `$share/<group>/<filter>` split into its group and filter; `None` for a plain filter.
/// An invalid share (empty group, wildcard in the group, no filter) is an `Err`.
pub fn shared(filter: &str) -> Result<Option<(&str, &str)>, ()> {
    let Some(rest) = filter.strip_prefix("$share/") else {
        return Ok(None);
    };
    let (group, inner) = rest.split_once('/').ok_or(())?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return Err(());
    }
    Ok(Some((group, inner)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_subscriptions_name_a_group_and_a_filter() {
        assert_eq!(shared("a/b"), Ok(None));
        assert_eq!(shared("$share/g/a/+"), Ok(Some(("g", "a/+"))));
        assert_eq!(shared("$share/g/#"), Ok(Some(("g", "#"))));
        for bad in [
            "$share/g",
            "$share//a",
            "$share/g/",
            "$share/+/a",
            "$share/#/a",
        ] {
            assert_eq!(shared(bad), Err(()), "{bad}");
        }
    }
}
