//! Who may connect to the embedded broker and what each client may publish and read: a
//! password file in Mosquitto's `mosquitto_passwd` format and an ACL file in Mosquitto's
//! `acl_file` syntax, so that operators reuse the files they have.
//!
//! Anonymous clients (no username) are let in only where [`Access::allow_anonymous`] says
//! so: by default, only when the broker listens on loopback, as Mosquitto 2 does.
//!
//! * `passwords.rs`: the password file ([`PasswordFile`]);
//! * `acl.rs`: the ACL file ([`Acl`]) and what a client asks to do ([`Want`]);
//! * `file.rs`: reading either file, and what can be wrong with one
//!   ([`AccessFileError`]).

mod acl;
mod file;
mod passwords;
#[cfg(test)]
mod tests;

pub use acl::{Acl, Want};
pub use file::{AccessFileError, LineError, Problem};
pub use passwords::PasswordFile;

/// How the broker checks clients.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// Users and their password hashes; `None` when no password file was given.
    pub passwords: Option<PasswordFile>,
    /// Topic permissions; `None` lets every client publish and read every topic.
    pub acl: Option<Acl>,
    /// Whether a client that sends no username may connect to the plain listener
    /// (`--mqtt-listen`); the TLS listener has a setting of its own.
    pub allow_anonymous: bool,
}

/// Why a CONNECT was refused by [`Access::authenticate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// No username, and anonymous clients are not allowed.
    Anonymous,
    /// An unknown username or a wrong password.
    BadCredentials,
}

impl Denied {
    /// The label of `weir_broker_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Anonymous => "anonymous",
            Self::BadCredentials => "bad_credentials",
        }
    }
}

impl Access {
    /// The client's identity if it may connect: the username it proved, or `None` for an
    /// anonymous client. Without a password file a username is not checked, and so not
    /// trusted as an identity: the client counts as anonymous.
    pub fn authenticate(
        &self,
        username: Option<&str>,
        password: Option<&[u8]>,
        allow_anonymous: bool,
    ) -> Result<Option<String>, Denied> {
        match (username, &self.passwords) {
            (Some(user), Some(file)) => {
                if file.verify(user, password.unwrap_or_default()) {
                    Ok(Some(user.to_owned()))
                } else {
                    Err(Denied::BadCredentials)
                }
            }
            _ if allow_anonymous => Ok(None),
            _ => Err(Denied::Anonymous),
        }
    }
}
