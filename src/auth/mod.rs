//! Who may use the HTTP API: bearer tokens, each with a role.
//!
//! * `viewer`: read rules and status.
//! * `editor`: create, change, test and delete rules.
//! * `admin`: everything, including tokens (and, later, connections and settings).
//!
//! The admin token comes from `--admin-token-file`, from `WEIR_ADMIN_TOKEN`, or is made at
//! the first start and written to `<data-dir>/admin.token` (mode 0600); its path is logged,
//! never the token. Other tokens are made by an admin over the API ([`tokens`]) and
//! stored hashed. A presented token is hashed and compared with every known hash in
//! constant time.

pub mod tokens;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{AdminToken, AuthSettings};
use tokens::{Stored, TokenError, TokenInfo, TokenStore, hash, new_token};

use std::sync::Arc;

use crate::shared_store::{Kind, SharedStore};

/// What a token may do; each role may do what the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }
}

/// The shortest admin token weir takes from an operator: a guessable one is refused.
const MIN_ADMIN_TOKEN: usize = 16;

/// The longest admin token weir takes, and so the most it reads of a token file: a path
/// pointed at something endless (`/dev/zero`, a log) is refused, not read into memory.
const MAX_ADMIN_TOKEN: usize = 4096;

/// The name the admin token goes by.
pub const ADMIN: &str = "admin";

/// The API's gatekeeper.
pub struct Auth {
    enabled: bool,
    metrics: bool,
    /// The admin token's hash.
    admin: [u8; 32],
    tokens: Mutex<TokenStore>,
    /// The fleet's shared store, where the tokens are kept instead of `tokens.json`.
    shared: std::sync::OnceLock<Arc<SharedStore>>,
}

impl Auth {
    /// Sets up authentication as `settings` say, keeping tokens under `data_dir`.
    pub fn open(settings: &AuthSettings, data_dir: &Path) -> anyhow::Result<Self> {
        let tokens = TokenStore::open(&data_dir.join("tokens.json"))?;
        if !settings.enabled {
            tracing::warn!(
                "API authentication is off (--auth off): anyone who can reach the HTTP API can read and change every rule"
            );
            return Ok(Self {
                enabled: false,
                metrics: false,
                admin: [0; 32],
                tokens: Mutex::new(tokens),
                shared: Default::default(),
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
            tokens: Mutex::new(tokens),
            shared: Default::default(),
        })
    }

    /// Keeps the tokens in the fleet's shared store from now on (those of `tokens.json`
    /// are not used), starting with the ones it holds.
    pub async fn use_shared(&self, shared: Arc<SharedStore>) -> anyhow::Result<()> {
        let all = load_tokens(&shared).await?;
        self.store().set_all_cached(all);
        let _ = self.shared.set(shared);
        Ok(())
    }

    /// Brings the token `name` in step with the shared store.
    pub async fn sync_token(&self, name: &str) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        match shared.get(Kind::Token, name).await {
            Ok(row) => {
                let stored = row.and_then(|r| serde_json::from_str::<Stored>(&r.body).ok());
                self.store().set_cached(name, stored);
            }
            Err(e) => {
                tracing::warn!(token = name, error = %format!("{e:#}"), "cannot read a changed token from the rule store")
            }
        }
    }

    /// Brings every token in step with the shared store.
    pub async fn sync_tokens(&self) {
        let Some(shared) = self.shared.get() else {
            return;
        };
        match load_tokens(shared).await {
            Ok(all) => self.store().set_all_cached(all),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot read the tokens of the rule store")
            }
        }
    }

    /// Whether requests need a token at all.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether `/metrics` needs a token.
    pub fn guards_metrics(&self) -> bool {
        self.enabled && self.metrics
    }

    /// The role of the bearer of `token`, if it is one weir knows.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let h = hash(token);
        let stored = self.store().role_of(&h);
        // Both comparisons run whatever the first found: no timing says which matched.
        let is_admin = tokens::same(&h, &self.admin);
        if is_admin { Some(Role::Admin) } else { stored }
    }

    /// Makes a token named `name` with `role`; returns the token, the one time it is shown.
    pub async fn create(&self, name: &str, role: Role) -> Result<String, TokenError> {
        if name == ADMIN {
            return Err(TokenError::Reserved(name.to_owned()));
        }
        let token = new_token();
        let Some(shared) = self.shared.get() else {
            self.store().insert(name, role, &token)?;
            return Ok(token);
        };
        let stored = self.store().new_entry(name, role, &token)?;
        let body = serde_json::to_string(&stored).map_err(|e| TokenError::Store(e.into()))?;
        match shared.put(Kind::Token, name, &body, 1).await {
            Ok(Ok(())) => {
                self.store().set_cached(name, Some(stored));
                Ok(token)
            }
            // Another replica made one of that name meanwhile.
            Ok(Err(_)) => {
                self.sync_token(name).await;
                Err(TokenError::Exists(name.to_owned()))
            }
            Err(e) => Err(TokenError::Store(e)),
        }
    }

    /// The tokens' names and roles, the admin token first.
    pub fn list(&self) -> Vec<TokenInfo> {
        let mut all = vec![TokenInfo {
            name: ADMIN.to_owned(),
            role: Role::Admin,
            created_at_ms: None,
        }];
        all.extend(self.store().list());
        all
    }

    /// Revokes the token named `name`; false if there is none.
    pub async fn remove(&self, name: &str) -> Result<bool, TokenError> {
        if name == ADMIN {
            return Err(TokenError::Reserved(name.to_owned()));
        }
        let Some(shared) = self.shared.get() else {
            return self.store().remove(name);
        };
        let removed = shared
            .delete_any(Kind::Token, name)
            .await
            .map_err(TokenError::Store)?;
        self.store().set_cached(name, None);
        Ok(removed)
    }

    fn store(&self) -> std::sync::MutexGuard<'_, TokenStore> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
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

/// Every token of the shared store (rows that are not tokens are skipped, logged).
async fn load_tokens(shared: &SharedStore) -> anyhow::Result<Vec<(String, Stored)>> {
    Ok(shared
        .all(Kind::Token)
        .await?
        .into_iter()
        .filter_map(|r| match serde_json::from_str::<Stored>(&r.body) {
            Ok(s) => Some((r.name, s)),
            Err(e) => {
                tracing::error!(token = %r.name, error = %e, "a row of the shared store is not a token: skipped");
                None
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(admin_token: AdminToken) -> AuthSettings {
        AuthSettings {
            enabled: true,
            admin_token,
            metrics: false,
        }
    }

    #[test]
    fn a_short_admin_token_is_refused_by_where_it_came_from() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Auth::open(&settings(AdminToken::Value("short".into())), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("WEIR_ADMIN_TOKEN is shorter than 16"),
            "{err:#}"
        );
        let file = tmp.path().join("secret");
        std::fs::write(&file, "  tiny \n").unwrap();
        let err = Auth::open(&settings(AdminToken::File(file.clone())), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("secret is shorter than 16"),
            "{err:#}"
        );
        let missing = tmp.path().join("missing");
        let err = Auth::open(&settings(AdminToken::File(missing)), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("cannot read the admin token file"),
            "{err:#}"
        );
    }

    #[test]
    fn an_endless_or_huge_admin_token_is_refused_without_reading_it_all() {
        let tmp = tempfile::tempdir().unwrap();
        let err = Auth::open(&settings(AdminToken::File("/dev/zero".into())), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("/dev/zero: it has more than 4096 bytes"),
            "{err:#}"
        );
        let huge = "x".repeat(MAX_ADMIN_TOKEN + 1);
        let err = Auth::open(&settings(AdminToken::Value(huge.clone())), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("WEIR_ADMIN_TOKEN is longer than 4096 bytes"),
            "{err:#}"
        );
        // A data-directory token file grown past the bound is refused too.
        std::fs::write(tmp.path().join("admin.token"), &huge).unwrap();
        let err = Auth::open(&settings(AdminToken::DataDir), tmp.path())
            .err()
            .unwrap();
        assert!(
            format!("{err:#}").contains("more than 4096 bytes"),
            "{err:#}"
        );
        // At the bound it is taken.
        let at = "y".repeat(MAX_ADMIN_TOKEN);
        let a = Auth::open(&settings(AdminToken::Value(at.clone())), tmp.path()).unwrap();
        assert_eq!(a.role_of(&at), Some(Role::Admin));
    }

    #[tokio::test]
    async fn the_made_admin_token_is_kept_and_roles_are_ordered() {
        let tmp = tempfile::tempdir().unwrap();
        let a = Auth::open(&settings(AdminToken::DataDir), tmp.path()).unwrap();
        let token = std::fs::read_to_string(tmp.path().join("admin.token")).unwrap();
        assert_eq!(a.role_of(token.trim()), Some(Role::Admin));
        // Opened again, the same token holds.
        let b = Auth::open(&settings(AdminToken::DataDir), tmp.path()).unwrap();
        assert_eq!(b.role_of(token.trim()), Some(Role::Admin));
        assert_eq!(b.role_of("weir_wrong"), None);
        assert!(Role::Viewer < Role::Editor && Role::Editor < Role::Admin);
        assert!(matches!(
            b.create(ADMIN, Role::Viewer).await,
            Err(TokenError::Reserved(_))
        ));
    }
}
