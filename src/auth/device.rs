//! Devices over HTTP: what a `device` token may publish and read, judged by the broker's
//! ACL file (`--mqtt-acl-file`) as an MQTT client whose user and client id are both the
//! token's name, so that `pattern write plant/%u/#` and `pattern readwrite
//! $aws/things/%c/shadow/#` hold over HTTP as over MQTT. Without an ACL file a device may
//! use every topic, as an MQTT client may. Other roles are people and programs the
//! operator trusts with the API: the ACL does not judge them.

use weir_connectors::mqtt::embedded::access::{Acl, Want};

use super::role::{Caller, Role};

/// The broker's rules for devices, as HTTP requests meet them.
#[derive(Debug, Clone, Default)]
pub struct Devices {
    acl: Option<Acl>,
    /// The largest MQTT packet a device may send (`--mqtt-max-packet-size`): an HTTP
    /// publish is bounded as its MQTT publish would be.
    pub max_packet: usize,
}

impl Devices {
    pub fn new(acl: Option<Acl>, max_packet: usize) -> Self {
        Self { acl, max_packet }
    }

    /// Whether `caller` (`None` with authentication off) may `want` `topic`.
    pub fn may(&self, caller: Option<&Caller>, want: Want, topic: &str) -> bool {
        match (caller, &self.acl) {
            (Some(c), Some(acl)) if c.role == Role::Device => {
                acl.allows(Some(&c.name), &c.name, want, topic)
            }
            _ => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_token_is_judged_by_the_acl_as_its_mqtt_user_and_client() {
        let acl =
            Acl::parse("pattern write plant/%u/#\npattern readwrite $aws/things/%c/shadow/#\n")
                .unwrap();
        let d = Devices::new(Some(acl), 1024);
        let dev = |name: &str| Caller {
            name: name.to_owned(),
            role: Role::Device,
        };
        let p1 = dev("p1");
        assert!(d.may(Some(&p1), Want::Write, "plant/p1/temp"));
        assert!(!d.may(Some(&p1), Want::Write, "plant/p2/temp"));
        assert!(d.may(Some(&p1), Want::Write, "$aws/things/p1/shadow/update"));
        assert!(d.may(Some(&p1), Want::Read, "$aws/things/p1/shadow/get/accepted"));
        assert!(!d.may(Some(&p1), Want::Read, "$aws/things/p2/shadow/get/accepted"));
        // An editor is not judged by the ACL; neither is anyone with authentication off.
        let editor = Caller {
            name: "p1".to_owned(),
            role: Role::Editor,
        };
        assert!(d.may(Some(&editor), Want::Write, "plant/p2/temp"));
        assert!(d.may(None, Want::Write, "plant/p2/temp"));
        // Without an ACL file a device may use every topic, as an MQTT client may.
        assert!(Devices::new(None, 1024).may(Some(&p1), Want::Write, "plant/p2/temp"));
    }
}
