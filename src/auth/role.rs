//! What a token may do: three roles for people and programs, each allowed what the ones
//! before it are, and `device`, a token a device publishes and reads its shadow with,
//! judged further by the broker's ACL file as the MQTT user of the token's name.

use serde::{Deserialize, Serialize};

/// What a token may do. Viewer, editor and admin: each may do what the ones before it
/// may. A device may do only what a route lets devices do ([`Need::devices`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Device,
    Viewer,
    Editor,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Device => "device",
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }

    /// Where the role stands among viewer, editor and admin; a device is below them all.
    fn rank(self) -> u8 {
        self as u8
    }

    /// Whether a bearer of this role may make a request that needs `need`.
    pub fn may(self, need: Need) -> bool {
        match self {
            Self::Device => need.devices,
            _ => self.rank() >= need.role.rank(),
        }
    }
}

/// What a request needs: a role (or one above it), and whether a device token may make
/// it too (its ACL then judges the topic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Need {
    pub role: Role,
    pub devices: bool,
}

impl Need {
    /// Needs `role` or one above it; not for devices.
    pub fn role(role: Role) -> Self {
        Self {
            role,
            devices: false,
        }
    }

    /// Needs `role` or one above it, or a device token.
    pub fn or_device(role: Role) -> Self {
        Self {
            role,
            devices: true,
        }
    }
}

/// Who made a request: the token's name (`admin` for the admin token) and its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: String,
    pub role: Role,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_may_only_what_routes_open_to_them() {
        let view = Need::role(Role::Viewer);
        let publish = Need::or_device(Role::Editor);
        assert!(!Role::Device.may(view));
        assert!(Role::Device.may(publish));
        assert!(!Role::Viewer.may(publish));
        assert!(Role::Editor.may(publish));
        assert!(Role::Admin.may(publish));
        assert!(Role::Viewer.may(view));
        assert!(!Role::Editor.may(Need::role(Role::Admin)));
        assert!(!Role::Device.may(Need::role(Role::Admin)));
    }
}
