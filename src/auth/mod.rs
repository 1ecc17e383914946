//! Who may use the HTTP API: bearer tokens, each with a role.
//!
//! * `viewer`: read rules and status.
//! * `editor`: create, change, test and delete rules.
//! * `admin`: everything, including tokens (and, later, connections and settings).
//! * `device`: publish over HTTP and use a thing's shadow, as the broker's ACL file lets
//!   the MQTT user of the token's name ([`device`]); nothing else.
//!
//! The admin token comes from `--admin-token-file`, from `WEIR_ADMIN_TOKEN`, or is made at
//! the first start and written to `<data-dir>/admin.token` (mode 0600); its path is logged,
//! never the token. Other tokens are made by an admin over the API ([`tokens`]) and
//! stored hashed. A presented token is hashed and compared with every known hash in
//! constant time.

pub mod device;
pub mod role;
pub mod tokens;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, bail};
use futures_util::future::BoxFuture;

use crate::config::{AdminToken, AuthSettings};
use crate::store::follow::Follower;
use crate::store::{Expect, Kind, Store, StoreError, validate_name};
pub use role::{Caller, Need, Role};
use tokens::{Stored, TokenError, TokenInfo, Tokens, hash, new_token};

/// The shortest admin token weir takes from an operator: a guessable one is refused.
const MIN_ADMIN_TOKEN: usize = 16;

/// The longest admin token weir takes, and so the most it reads of a token file: a path
/// pointed at something endless (`/dev/zero`, a log) is refused, not read into memory.
const MAX_ADMIN_TOKEN: usize = 4096;

/// The name the admin token goes by.
pub const ADMIN: &str = "admin";

/// How often a token change is tried again when other replicas changed it first.
const CONFLICT_TRIES: usize = 3;

/// The API's gatekeeper.
pub struct Auth {
    enabled: bool,
    metrics: bool,
    /// The admin token's hash.
    admin: [u8; 32],
    store: Store,
    /// The store's tokens: this replica's copy.
    tokens: Mutex<Tokens>,
}

impl Auth {
    /// Sets up authentication as `settings` say (the admin token made under `data_dir`
    /// if need be), with the tokens of `store`.
    pub async fn open(
        settings: &AuthSettings,
        data_dir: &Path,
        store: Store,
    ) -> anyhow::Result<Self> {
        let tokens = Mutex::new(Tokens::new(store.list(Kind::Token).await?));
        if !settings.enabled {
            tracing::warn!(
                "API authentication is off (--auth off): anyone who can reach the HTTP API can read and change every rule"
            );
            return Ok(Self {
                enabled: false,
                metrics: false,
                admin: [0; 32],
                store,
                tokens,
            });
        }
        let admin = match &settings.admin_token {
            AdminToken::Value(t) => checked(t.trim(), "WEIR_ADMIN_TOKEN")?.to_owned(),
            AdminToken::File(path) => {
                let text = read_token_file(path).with_context(|| {
                    format!("cannot read the admin token file {}", path.display())
                })?;
                checked(text.trim(), &path.display().to_string())?.to_owned()
            }
            AdminToken::DataDir => data_dir_token(&data_dir.join("admin.token"))?,
        };
        Ok(Self {
            enabled: true,
            metrics: settings.metrics,
            admin: hash(&admin),
            store,
            tokens,
        })
    }

    /// What follows the store's feed for the tokens.
    pub fn follower(self: &Arc<Self>) -> Arc<dyn Follower> {
        Arc::new(TokensFollower(self.clone()))
    }

    /// Makes the token `name` as the store holds it now the copy here.
    async fn refresh(&self, name: &str) -> anyhow::Result<()> {
        let remote = self.store.get::<Stored>(Kind::Token, name).await?;
        self.copy().set(name, remote);
        Ok(())
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `/metrics` needs a token.
    pub fn guards_metrics(&self) -> bool {
        self.enabled && self.metrics
    }

    /// The bearer of `token` (its name and role), if it is one weir knows.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let h = hash(token);
        let stored = self.copy().caller(&h);
        // Both comparisons run whatever the first found: no timing says which matched.
        let is_admin = tokens::same(&h, &self.admin);
        if is_admin {
            Some(Caller {
                name: ADMIN.to_owned(),
                role: Role::Admin,
            })
        } else {
            stored
        }
    }

    /// Makes a token named `name` with `role`; returns the token, the one time it is shown.
    pub async fn create(&self, name: &str, role: Role) -> Result<String, TokenError> {
        if name == ADMIN {
            return Err(TokenError::Reserved(name.to_owned()));
        }
        validate_name(Kind::Token, name)?;
        self.copy().check_new(name)?;
        let token = new_token();
        let stored = Stored::new(role, &token);
        match self
            .store
            .put(Kind::Token, name, &stored, Expect::Absent)
            .await
        {
            Ok(version) => {
                self.copy().set(
                    name,
                    Some(crate::store::Versioned {
                        version,
                        value: stored,
                    }),
                );
                Ok(token)
            }
            // Another replica made one of that name meanwhile.
            Err(StoreError::Conflict { .. }) => {
                self.refresh(name).await.map_err(TokenError::Store)?;
                Err(TokenError::Exists(name.to_owned()))
            }
            Err(StoreError::Failed(e)) => Err(TokenError::Store(e)),
        }
    }

    /// The tokens' names and roles, the admin token first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all = vec![TokenInfo {
            name: ADMIN.to_owned(),
            role: Role::Admin,
            created_at_ms: None,
        }];
        all.extend(self.copy().list());
        all
    }

    /// Revokes the token named `name`; false if there is none.
    pub async fn remove(&self, name: &str) -> Result<bool, TokenError> {
        if name == ADMIN {
            return Err(TokenError::Reserved(name.to_owned()));
        }
        // A token another replica made may not have reached this replica's copy yet:
        // the store says whether it exists, so that revoking it is never a 404 while it
        // still works elsewhere.
        if self.copy().version(name).is_none() {
            self.refresh(name).await.map_err(TokenError::Store)?;
        }
        for _ in 0..CONFLICT_TRIES {
            let Some(version) = self.copy().version(name) else {
                return Ok(false);
            };
            match self.store.delete(Kind::Token, name, version).await {
                Ok(()) => {
                    self.copy().set(name, None);
                    return Ok(true);
                }
                Err(StoreError::Conflict { .. }) => {
                    self.refresh(name).await.map_err(TokenError::Store)?
                }
                Err(StoreError::Failed(e)) => return Err(TokenError::Store(e)),
            }
        }
        Err(TokenError::Conflict(name.to_owned()))
    }

    fn copy(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct TokensFollower(Arc<Auth>);

impl Follower for TokensFollower {
    fn kind(&self) -> Kind {
        Kind::Token
    }

    fn held(&self) -> BoxFuture<'_, Vec<(String, u64)>> {
        Box::pin(std::future::ready(self.0.copy().versions()))
    }

    fn sync<'a>(&'a self, name: &'a str) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.0.refresh(name).await {
                tracing::warn!(token = name, error = %format!("{e:#}"), "cannot read a changed token from the store");
            }
        })
    }
}

/// An operator's admin token, refused when it is too short to be safe or too long to be
/// one.
fn checked<'a>(token: &'a str, from: &str) -> anyhow::Result<&'a str> {
    if token.chars().count() < MIN_ADMIN_TOKEN {
        bail!("the admin token from {from} is shorter than {MIN_ADMIN_TOKEN} characters");
    }
    if token.len() > MAX_ADMIN_TOKEN {
        bail!("the admin token from {from} is longer than {MAX_ADMIN_TOKEN} bytes");
    }
    Ok(token)
}

/// The text of a token file, which has at most [`MAX_ADMIN_TOKEN`] bytes: no more is read.
fn read_token_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read as _;
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_ADMIN_TOKEN as u64 + 1)
        .read_to_string(&mut text)?;
    if text.len() > MAX_ADMIN_TOKEN {
        return Err(std::io::Error::other(format!(
            "it has more than {MAX_ADMIN_TOKEN} bytes"
        )));
    }
    Ok(text)
}

/// The admin token in `path`, made (and written with mode 0600) if there is none yet.
fn data_dir_token(path: &PathBuf) -> anyhow::Result<String> {
    match read_token_file(path) {
        Ok(text) => {
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(file = %path.display(), mode = format!("{mode:o}"), "the admin token file can be read by others; make it 0600");
            }
            Ok(checked(text.trim(), &path.display().to_string())?.to_owned())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
            let token = new_token();
            crate::private_file::replace(path, format!("{token}\n").as_bytes())
                .with_context(|| format!("cannot write {}", path.display()))?;
            tracing::info!(file = %path.display(), "made an admin token for the HTTP API; it is in this file");
            Ok(token)
        }
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn open(settings: &AuthSettings, dir: &Path) -> anyhow::Result<Auth> {
        let store = Store::new(Arc::new(crate::store::local::Local::open(dir)?));
        Auth::open(settings, dir, store).await
    }

    fn settings(admin_token: AdminToken) -> AuthSettings {
        AuthSettings {
            enabled: true,
            admin_token,
            metrics: false,
        }
    }

    #[tokio::test]
    async fn a_short_admin_token_is_refused_by_where_it_came_from() {
        let tmp = tempfile::tempdir().unwrap();
        let err = open(&settings(AdminToken::Value("short".into())), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("WEIR_ADMIN_TOKEN is shorter than 16"),
            "{err:#}"
        );
        let file = tmp.path().join("secret");
        std::fs::write(&file, "  tiny \n").unwrap();
        let err = open(&settings(AdminToken::File(file.clone())), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("secret is shorter than 16"),
            "{err:#}"
        );
        let missing = tmp.path().join("missing");
        let err = open(&settings(AdminToken::File(missing)), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("cannot read the admin token file"),
            "{err:#}"
        );
    }

    #[tokio::test]
    async fn an_endless_or_huge_admin_token_is_refused_without_reading_it_all() {
        let tmp = tempfile::tempdir().unwrap();
        let err = open(&settings(AdminToken::File("/dev/zero".into())), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("/dev/zero: it has more than 4096 bytes"),
            "{err:#}"
        );
        let huge = "x".repeat(MAX_ADMIN_TOKEN + 1);
        let err = open(&settings(AdminToken::Value(huge.clone())), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("WEIR_ADMIN_TOKEN is longer than 4096 bytes"),
            "{err:#}"
        );
        // A data-directory token file grown past the bound is refused too.
        std::fs::write(tmp.path().join("admin.token"), &huge).unwrap();
        let err = open(&settings(AdminToken::DataDir), tmp.path())
            .await
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("more than 4096 bytes"),
            "{err:#}"
        );
        // At the bound it is taken.
        let at = "y".repeat(MAX_ADMIN_TOKEN);
        let a = open(&settings(AdminToken::Value(at.clone())), tmp.path())
            .await
            .unwrap();
        assert_eq!(a.caller(&at).map(|c| c.role), Some(Role::Admin));
    }

    #[tokio::test]
    async fn the_made_admin_token_is_kept_and_roles_are_ordered() {
        let tmp = tempfile::tempdir().unwrap();
        let a = open(&settings(AdminToken::DataDir), tmp.path())
            .await
            .unwrap();
        let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
        assert_eq!(a.caller(token.trim()).map(|c| c.role), Some(Role::Admin));
        // Opened again, the same token holds.
        let b = open(&settings(AdminToken::DataDir), tmp.path())
            .await
            .unwrap();
        assert_eq!(b.caller(token.trim()).map(|c| c.role), Some(Role::Admin));
        assert_eq!(b.caller("weir_wrong"), None);
        assert!(
            Role::Admin.may(Need::role(Role::Editor))
                && !Role::Viewer.may(Need::role(Role::Editor))
        );
        assert!(matches!(
            b.create(ADMIN, Role::Viewer).await,
            Err(TokenError::Reserved(_))
        ));
    }
}
