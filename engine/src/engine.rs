//! The shared planning context every rule is compiled and planned with: DataFusion's
//! session state with weir's settings (one partition, case-sensitive identifiers) and
//! weir's functions, each of DataFusion's metered (see [`crate::dialect::functions`]).

use std::sync::Arc;

use crate::dialect;
use crate::dialect::functions::shadows::{self, ShadowReader, ShadowSlot};

/// The shared planning context: DataFusion's session state with weir's settings and
/// functions. Create one per process and share it between rules.
#[derive(Debug)]
pub struct Engine {
    state: datafusion::execution::SessionState,
    /// What `get_thing_shadow()` reads through, once the program gives it.
    shadows: ShadowSlot,
}

impl Engine {
    pub fn new() -> Arc<Self> {
        use datafusion::execution::SessionStateBuilder;
        use datafusion::prelude::SessionConfig;
        let mut config = SessionConfig::new().with_target_partitions(1);
        // AWS IoT SQL is case sensitive: `currentAmbientTemperature` must not be lowered.
        config.options_mut().sql_parser.enable_ident_normalization = false;
        let mut state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .build();
        let slot = ShadowSlot::default();
        let udfs = dialect::functions::udfs();
        for udf in udfs.into_iter().chain([shadows::udf(slot.clone())]) {
            use datafusion::execution::FunctionRegistry;
            state
                .register_udf(Arc::new(udf))
                .expect("weir's functions register once, without conflict");
        }
        dialect::functions::bounded::install(&mut state);
        Arc::new(Self {
            state,
            shadows: slot,
        })
    }

    /// Lets `get_thing_shadow()` read shadows through `reader` (once; later calls are
    /// ignored). Until then, and in an engine never given one, it finds none.
    pub fn read_shadows_with(&self, reader: Arc<dyn ShadowReader>) {
        let _ = self.shadows.set(reader);
    }

    pub(crate) fn state(&self) -> &datafusion::execution::SessionState {
        &self.state
    }
}
