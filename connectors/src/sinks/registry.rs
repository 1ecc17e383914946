//! The `registry!` macro, which turns the list of sinks in `sinks/mod.rs` into the types
//! rules and operators write: [`ActionConfig`](super::ActionConfig), one variant per sink,
//! and [`ConnectionConfig`](super::ConnectionConfig), one per sink that takes a named
//! connection, each with its dispatch to the sinks' [`SinkConfig`] and [`Connection`].
//!
//! [`SinkConfig`]: crate::delivery::SinkConfig
//! [`Connection`]: crate::delivery::Connection

/// Declares the registry from one line per sink: `Kind(ConfigType)`, followed by
/// `=> ConnectionKind(ConnectionType)` when the sink takes a named connection. A kind is
/// the key rules (or operators) write it under, in CamelCase.
macro_rules! registry {
    // The connections are declared last sink first, so that the kinds an unknown kind's
    // error lists (serde names them in declaration order) stay in the order they have
    // always had: kafka, object_store, webhook, mqtt.
    (@connections [$($done:tt)*] $conn:ident($connection:ty) for $kind:ident, $($rest:tt)*) => {
        $crate::sinks::registry::registry!(
            @connections [$conn($connection) for $kind, $($done)*] $($rest)*
        );
    };
    (@connections [$($conn:ident($connection:ty) for $kind:ident,)*]) => {
        /// A connection as an operator writes it: `{"kafka": {...}}`,
        /// `{"object_store": {...}}`, `{"webhook": {...}}`, `{"mqtt": {...}}` (for
        /// republish actions). See [`Connection`](crate::delivery::Connection).
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum ConnectionConfig {
            $($conn($connection),)*
        }

        impl ConnectionConfig {
            /// The connection's type, as written: `kafka`, `mqtt`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$conn(_) => <$connection as $crate::delivery::Connection>::KIND,)*
                }
            }

            /// The type of action that can use it.
            fn action_kind(&self) -> &'static str {
                match self {
                    $(Self::$conn(_) => <
                        <$connection as $crate::delivery::Connection>::Action
                        as $crate::delivery::SinkConfig
                    >::KIND,)*
                }
            }

            /// Checks the connection as an action using it would be, without I/O.
            pub fn validate(&self) -> Result<(), $crate::delivery::ConfigError> {
                match self {
                    $(Self::$conn(c) => $crate::delivery::Connection::validate(c),)*
                }
            }

            /// The connection as an API answer shows it: its secrets redacted.
            pub fn redacted(&self) -> Self {
                match self {
                    $(Self::$conn(c) => Self::$conn($crate::delivery::Connection::redacted(c)),)*
                }
            }

            /// Gives the secrets sent back redacted their values in `old`, the connection
            /// as stored (if it is of the same type); `Err` names a secret that has none.
            pub fn restore_secrets(
                &mut self,
                old: Option<&ConnectionConfig>,
            ) -> Result<(), $crate::delivery::secrets::SecretError> {
                match self {
                    $(Self::$conn(c) => {
                        let old = match old {
                            Some(Self::$conn(o)) => Some(o),
                            _ => None,
                        };
                        $crate::delivery::Connection::restore_secrets(c, old)
                    })*
                }
            }
        }

        impl ActionConfig {
            /// The action as if written inline with the settings of `connection` (named
            /// `name`).
            pub fn with_connection(
                &self,
                name: &str,
                connection: &ConnectionConfig,
            ) -> Result<ActionConfig, $crate::delivery::ConfigError> {
                match (self, connection) {
                    $((Self::$kind(a), ConnectionConfig::$conn(c)) => Ok(Self::$kind(
                        $crate::delivery::Connection::apply(c, name, a)?,
                    )),)*
                    (a, c) => Err($crate::delivery::ConfigError::invalid(
                        a.kind(),
                        format!(
                            "the connection '{name}' is for {} actions, not {}",
                            c.action_kind(),
                            a.kind()
                        ),
                    )),
                }
            }
        }
    };
    ($($kind:ident($config:ty) $(=> $conn:ident($connection:ty))?),* $(,)?) => {
        /// An action as written in a rule: `{"republish": {...}}`, `{"webhook": {...}}`,
        /// `{"object_store": {...}}`, `{"kafka": {...}}`. This is the form rules are
        /// stored and listed in; [`ActionConfig::validate`] checks it.
        #[derive(Debug, Clone, PartialEq, ::serde::Serialize, ::serde::Deserialize)]
        #[serde(rename_all = "snake_case", deny_unknown_fields)]
        pub enum ActionConfig {
            $($kind($config),)*
        }

        impl ActionConfig {
            /// The action's type, as written in the rule.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Self::$kind(_) => <$config as $crate::delivery::SinkConfig>::KIND,)*
                }
            }

            /// The maps of the action's configuration whose values may be secrets.
            fn secret_maps(&mut self) -> Vec<$crate::delivery::secrets::SecretMap<'_>> {
                match self {
                    $(Self::$kind(c) => $crate::delivery::SinkConfig::secret_maps(c),)*
                }
            }

            /// The connection the action names, if any.
            pub fn connection(&self) -> Option<&str> {
                match self {
                    $(Self::$kind(c) => $crate::delivery::SinkConfig::connection(c),)*
                }
            }

            /// Checks the action without touching the network and parses its templates,
            /// whose expressions go to `exprs` (the rule evaluates them for every
            /// output), then checks it against the operator's `policy`. Called once per
            /// rule submission.
            pub fn validate(
                &self,
                exprs: &mut ::weir_engine::template::TemplateExprs,
                policy: &$crate::delivery::Policy,
            ) -> Result<$crate::sinks::Action, $crate::delivery::ConfigError> {
                if let Some(name) = self.connection() {
                    return Err($crate::delivery::ConfigError::invalid(
                        self.kind(),
                        format!("the connection '{name}' was not resolved"),
                    ));
                }
                match self {
                    $(Self::$kind(c) => {
                        let v = $crate::delivery::SinkConfig::validate(c, exprs)?;
                        $crate::delivery::SinkConfig::check_policy(c, policy)?;
                        Ok($crate::sinks::Action::new::<$config>(v))
                    })*
                }
            }

            /// [`ActionConfig::validate`] for an action resolved with an operator's named
            /// connection: not held to the policy on inline destinations.
            pub fn validate_trusted(
                &self,
                exprs: &mut ::weir_engine::template::TemplateExprs,
            ) -> Result<$crate::sinks::Action, $crate::delivery::ConfigError> {
                match self {
                    $(Self::$kind(c) => Ok($crate::sinks::Action::new::<$config>(
                        $crate::delivery::SinkConfig::validate(c, exprs)?,
                    ).trusted()),)*
                }
            }

            /// The action as an API answer shows it: its secrets
            /// [`REDACTED`](crate::delivery::secrets::REDACTED).
            pub fn redacted(&self) -> Self {
                $crate::delivery::secrets::redacted(self, Self::secret_maps)
            }

            /// Gives the secrets this action sends back as
            /// [`REDACTED`](crate::delivery::secrets::REDACTED) their values in `old`, the
            /// action as stored (if it is of the same type); `Err` names a secret that has
            /// none.
            pub fn restore_secrets(
                &mut self,
                old: Option<&ActionConfig>,
            ) -> Result<(), $crate::delivery::secrets::SecretError> {
                let old = old.filter(|o| o.kind() == self.kind());
                $crate::delivery::secrets::restore(self, old, Self::secret_maps)
            }
        }

        $crate::sinks::registry::registry!(@connections [] $($($conn($connection) for $kind,)?)*);
    };
}

pub(crate) use registry;
