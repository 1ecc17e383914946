//! Following the store's feed: every announced change goes to the [`Follower`] of its
//! kind, which brings what runs here in step with what the store holds. One task per
//! weir follows the one feed, for every kind; whether the change came from this process,
//! from another replica, or from a comparison after announcements were missed, the same
//! code applies it.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use super::{Change, Feed, Kind, Store};

/// What keeps one kind of object running here as the store holds it.
pub trait Follower: Send + Sync {
    fn kind(&self) -> Kind;
    /// The version of each object of the kind held here.
    fn held(&self) -> BoxFuture<'_, Vec<(String, u64)>>;
    /// Brings the object `name` here in step with the store: reads it (or finds it gone)
    /// under the follower's own lock, so that no change of this process interleaves, and
    /// applies it unless the version here is the store's.
    fn sync<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()>;
}

/// Follows `feed` (subscribed to before the followers read the store, so that nothing
/// changed since is missed) until `stop`, handing each change to the follower of its kind.
pub fn follow(
    store: Store,
    mut feed: Feed,
    followers: Vec<Arc<dyn Follower>>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                c = feed.next() => c,
            };
            match change {
                None => return,
                Some(Change::One(kind, name)) => {
                    for f in followers.iter().filter(|f| f.kind() == kind) {
                        f.sync(&name).await;
                    }
                }
                Some(Change::All) => {
                    for kind in Kind::ALL {
                        for f in followers.iter().filter(|f| f.kind() == kind) {
                            catch_up(&store, f.as_ref()).await;
                        }
                    }
                }
            }
        }
    })
}

/// Syncs every object whose version here differs from the store's, or that only one of
/// them has.
async fn catch_up(store: &Store, follower: &dyn Follower) {
    let kind = follower.kind();
    let remote: HashMap<String, u64> = match store.versions(kind).await {
        Ok(v) => v.into_iter().collect(),
        Err(e) => {
            tracing::warn!(kind = %kind, error = %format!("{e:#}"), "cannot read the store");
            return;
        }
    };
    let held: HashMap<String, u64> = follower.held().await.into_iter().collect();
    let mut differing: Vec<&String> = remote
        .iter()
        .filter(|(n, v)| held.get(*n) != Some(*v))
        .map(|(n, _)| n)
        .chain(held.keys().filter(|n| !remote.contains_key(*n)))
        .collect();
    differing.sort();
    for name in differing {
        follower.sync(name).await;
    }
}
